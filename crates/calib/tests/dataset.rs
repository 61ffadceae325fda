use std::fs;
use std::path::{Path, PathBuf};

use subq_calib::{label_of, list_images, CalibError, ImageItem, Synsets};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

fn imagenet() -> Synsets {
    Synsets::load(&assets().join("imagenet_synsets.txt")).unwrap()
}

#[test]
fn flat_layout_eval_folder() {
    let dir = assets().join("images/eval");
    let items = list_images(&dir).unwrap();
    assert_eq!(items.len(), 400);

    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(items[0].path.file_name().unwrap(), names[0]);
    assert!(items.windows(2).all(|w| w[0].path < w[1].path));

    let synsets = imagenet();
    for item in &items {
        let name = item.path.file_name().unwrap().to_str().unwrap();
        assert_eq!(item.wnid.as_deref(), Some(&name[..9]), "{name}");
        // Every eval image is an ImageNet class whose name the file name repeats.
        let idx = label_of(item, &synsets).unwrap();
        assert_eq!(synsets.wnid(idx), &name[..9]);
    }
}

#[test]
fn flat_layout_calib_folder_starts_with_tench() {
    let items = list_images(&assets().join("images/calib")).unwrap();
    assert_eq!(items.len(), 100);
    assert_eq!(items[0].path.file_name().unwrap(), "n01440764_tench.JPEG");
    assert_eq!(label_of(&items[0], &imagenet()).unwrap(), 0);
}

#[test]
fn imagefolder_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for sub in ["n01443537", "n01440764", "misc"] {
        fs::create_dir(d.join(sub)).unwrap();
    }
    let files = [
        "n01443537/b.PNG",
        "n01443537/a.jpeg",
        "n01440764/x.JPG",
        "n01440764/notes.txt",
        "misc/n01484850_shark.jpg",
        "misc/holiday.jpg",
        "README.md",
        "n01443537.jpg.bak",
    ];
    for f in files {
        fs::write(d.join(f), b"not decoded by list_images").unwrap();
    }
    let items = list_images(d).unwrap();
    let got: Vec<(String, Option<&str>)> = items
        .iter()
        .map(|i| {
            (
                i.path
                    .strip_prefix(d)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string(),
                i.wnid.as_deref(),
            )
        })
        .collect();
    let want = vec![
        ("misc/holiday.jpg".to_string(), None),
        ("misc/n01484850_shark.jpg".to_string(), Some("n01484850")),
        ("n01440764/x.JPG".to_string(), Some("n01440764")),
        ("n01443537/a.jpeg".to_string(), Some("n01443537")),
        ("n01443537/b.PNG".to_string(), Some("n01443537")),
    ];
    assert_eq!(got, want);

    let synsets = imagenet();
    assert_eq!(label_of(&items[2], &synsets).unwrap(), 0);
    assert_eq!(label_of(&items[3], &synsets).unwrap(), 1);
    assert_eq!(label_of(&items[1], &synsets).unwrap(), 2);
    assert!(matches!(
        label_of(&items[0], &synsets),
        Err(CalibError::UnknownLabel { wnid: None, .. })
    ));
}

#[test]
fn unknown_label() {
    let synsets = imagenet();
    let item = ImageItem {
        path: "/data/n99999999_x.jpg".into(),
        wnid: Some("n99999999".into()),
    };
    let err = label_of(&item, &synsets).unwrap_err();
    match &err {
        CalibError::UnknownLabel { path, wnid } => {
            assert_eq!(path, Path::new("/data/n99999999_x.jpg"));
            assert_eq!(wnid.as_deref(), Some("n99999999"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("/data/n99999999_x.jpg") && msg.contains("n99999999"),
        "{msg}"
    );

    // An ImageNet wnid that is not one of the 19 dog breeds.
    let dogs = Synsets::load(&assets().join("dog_breeds_synsets.txt")).unwrap();
    let tench = ImageItem {
        path: "t.jpg".into(),
        wnid: Some("n01440764".into()),
    };
    assert!(matches!(
        label_of(&tench, &dogs),
        Err(CalibError::UnknownLabel { .. })
    ));
}

#[test]
fn bad_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = list_images(&missing).unwrap_err();
    assert!(
        matches!(&err, CalibError::Io { path, .. } if path == &missing),
        "{err:?}"
    );
    assert!(err.to_string().contains("nope"), "{err}");

    let file = tmp.path().join("file.jpg");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(
        list_images(&file),
        Err(CalibError::NotADirectory { .. })
    ));

    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    fs::write(empty.join("labels.txt"), b"x").unwrap();
    let err = list_images(&empty).unwrap_err();
    assert!(matches!(err, CalibError::NoImages { .. }), "{err:?}");
    assert!(err.to_string().contains("empty"), "{err}");
}
