use std::path::{Path, PathBuf};

use subq_calib::{CalibError, Synsets};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

#[test]
fn imagenet_synsets() {
    let path = assets().join("imagenet_synsets.txt");
    let s = Synsets::load(&path).unwrap();
    assert_eq!(s.len(), 1000);
    assert_eq!(s.index_of("n01440764"), Some(0));
    assert_eq!(s.index_of("n99999999"), None);
    // Cross-check every line against the raw file.
    let text = std::fs::read_to_string(&path).unwrap();
    for (i, line) in text.lines().enumerate() {
        let (wnid, name) = line.split_once(' ').unwrap();
        assert_eq!(s.wnid(i), wnid);
        assert_eq!(s.name(i), name);
        assert_eq!(s.index_of(wnid), Some(i));
    }
    assert_eq!(s.name(0), "tench");
}

#[test]
fn dog_synsets() {
    let s = Synsets::load(&assets().join("dog_breeds_synsets.txt")).unwrap();
    assert_eq!(s.len(), 19);
    assert_eq!(s.index_of("n02085620"), Some(0));
    assert_eq!(s.name(1), "Maltese dog");
}

#[test]
fn bad_synsets_files() {
    let p = Path::new("x/syn.txt");
    let err = Synsets::parse("n1 a\n\nn2 b\n", p).unwrap_err();
    assert!(
        matches!(err, CalibError::BadSynsets { line: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("x/syn.txt"), "{err}");
    assert!(matches!(
        Synsets::parse("n1 a\nn1 b\n", p),
        Err(CalibError::BadSynsets { line: 2, .. })
    ));
    assert!(matches!(
        Synsets::parse("", p),
        Err(CalibError::BadSynsets { .. })
    ));
    // CRLF files and entries without a name are accepted.
    let s = Synsets::parse("n1 a b\r\nn2\r\n", p).unwrap();
    assert_eq!(
        (s.len(), s.name(0), s.name(1), s.wnid(1)),
        (2, "a b", "n2", "n2")
    );

    let missing = Synsets::load(Path::new("/nonexistent/synsets.txt")).unwrap_err();
    assert!(matches!(missing, CalibError::Io { .. }));
    assert!(missing.to_string().contains("/nonexistent/synsets.txt"));
}
