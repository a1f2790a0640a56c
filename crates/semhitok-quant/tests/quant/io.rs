//! safetensors codebook I/O with name, shape and dtype checks.

use ndarray::{Array2, Array3};
use semhitok_quant::io::{load, load_codebook, load_pixel_codebook, save};
use semhitok_quant::Error;

#[test]
fn codebooks_round_trip_and_mismatches_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("codebooks.safetensors");
    let sem = Array2::from_shape_fn((5, 3), |(i, j)| i as f32 - 0.5 * j as f32);
    let pix = Array3::from_shape_fn((5, 2, 4), |(k, j, d)| (k * 8 + j * 4 + d) as f32 * 0.25);
    save(
        &path,
        &[
            ("semantic_codebook", sem.view().into_dyn()),
            ("pixel_codebook", pix.t().into_dyn()),
        ],
    )
    .unwrap();
    assert_eq!(
        load_codebook(&path, "semantic_codebook", Some(5), Some(3)).unwrap(),
        sem
    );
    let back = load(&path, "pixel_codebook", &[None, None, None]).unwrap();
    assert_eq!(
        back,
        pix.t().into_dyn(),
        "non-contiguous views are stored in logical order"
    );

    let e = load_codebook(&path, "semantic_codebook", Some(6), None).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. })
            && e.to_string().contains("[6, _]")
            && e.to_string().contains("[5, 3]"),
        "{e}"
    );
    let e = load_pixel_codebook(&path, "semantic_codebook", None, None, None).unwrap_err();
    assert!(e.to_string().contains("[_, _, _]"), "{e}");
    let e = load_codebook(&path, "codebook", None, None).unwrap_err();
    assert!(
        matches!(e, Error::MissingTensor { .. }) && e.to_string().contains("pixel_codebook"),
        "{e}"
    );
    let e = load_codebook(&dir.path().join("absent.safetensors"), "x", None, None).unwrap_err();
    assert!(e.to_string().contains("absent.safetensors"), "{e}");

    // A float16 tensor is rejected by dtype.
    let f16_path = dir.path().join("half.safetensors");
    let data = vec![0u8; 2 * 6];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![2, 3], &data).unwrap();
    safetensors::serialize_to_file(vec![("codes", view)], &None, &f16_path).unwrap();
    let e = load_codebook(&f16_path, "codes", None, None).unwrap_err();
    assert!(
        matches!(e, Error::Dtype { .. }) && e.to_string().contains("F16"),
        "{e}"
    );

    // Non-finite values in a file are named by position.
    let mut bad = sem.clone();
    bad[[4, 1]] = f32::NAN;
    save(&path, &[("semantic_codebook", bad.view().into_dyn())]).unwrap();
    let e = load_codebook(&path, "semantic_codebook", None, None).unwrap_err();
    assert!(e.to_string().contains("[4, 1]"), "{e}");
}
