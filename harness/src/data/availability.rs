//! Whether a suite's dataset is there at all, and how to get it: `harness plan` shows a suite's
//! runs before the data is downloaded (with provisional ids), while data that is present but
//! broken still fails with the reader's error.

use std::path::{Path, PathBuf};

/// A dataset that is not in its folder.
#[derive(Clone, Debug)]
pub struct Missing {
    /// The folder searched (from --data-dir, [suite].data_dir, KD_HARNESS_DATA or ./data).
    pub looked_in: PathBuf,
    /// What would have been found there.
    pub expected: String,
    /// How to get it, as commands or a URL.
    pub how: String,
}

/// `Some` when none of the layouts the readers accept exists under `dir` (digits is embedded
/// and never missing).
pub fn missing(name: &str, dir: &Path) -> Option<Missing> {
    let none = |paths: &[&str]| paths.iter().all(|p| !dir.join(p).exists());
    let torchvision = |class: &str, folder: &str, tgz: &str| {
        format!(
            "python -c \"import torchvision; torchvision.datasets.{class}('{d}', download=True)\"  (leaves {folder}/), \
             or unpack https://www.cs.toronto.edu/~kriz/{tgz} into {d}",
            d = dir.display()
        )
    };
    let (expected, how) = match name {
        "cifar10" if none(&["cifar-10-batches-py", "cifar-10-batches-bin", "data_batch_1", "data_batch_1.bin"]) => {
            ("cifar-10-batches-py/ or cifar-10-batches-bin/", torchvision("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz"))
        }
        "cifar100" if none(&["cifar-100-python", "cifar-100-binary", "train", "train.bin"]) => {
            ("cifar-100-python/ or cifar-100-binary/", torchvision("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz"))
        }
        "tiny-imagenet" if none(&["tiny-imagenet-200", "wnids.txt"]) => {
            ("tiny-imagenet-200/", format!("download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it in {}", dir.display()))
        }
        "imagenet" if none(&["imagenet", "train", "val"]) => (
            "imagenet/train/<class>/*.JPEG and imagenet/val/<class>/*.JPEG",
            format!(
                "download ILSVRC2012 (train and val) from https://image-net.org/download.php (needs an account) and unpack both \
                 as class folders under {}/imagenet (val sorted into class folders, as torchvision's ImageNet expects)",
                dir.display()
            ),
        ),
        _ => return None,
    };
    Some(Missing { looked_in: dir.to_path_buf(), expected: expected.to_string(), how })
}
