//! The `subq` binary on bad input: non-zero exit, an "error:" line on stderr naming the file or
//! node at fault, and never a panic. Plus the two success paths the error cases are built around.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prost::Message;
use subq_onnx::proto::{self, attribute_type as at, data_type as dt, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

fn mobilenet() -> PathBuf {
    assets().join("models/mobilenetv2_1.0_160_dogs.onnx")
}

fn eval_images() -> PathBuf {
    assets().join("images/eval")
}

/// The first bundled eval image (sorted by name).
fn some_eval_image() -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(eval_images()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpeg"))).collect();
    files.sort();
    files.into_iter().next().expect("bundled eval images")
}

fn subq<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_subq")).args(args).output().expect("run subq")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a clean failure: non-zero exit (not a signal), stderr starting with "error:",
/// mentioning every `needle`, and no panic. Returns stderr.
#[track_caller]
fn assert_clean_failure(out: &Output, needles: &[&str]) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let ctx = format!("\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(!stderr.contains("panicked"), "subq panicked:{ctx}");
    match out.status.code() {
        Some(0) => panic!("expected a non-zero exit code:{ctx}"),
        Some(_) => {}
        None => panic!("subq was killed by a signal:{ctx}"),
    }
    assert!(stderr.starts_with("error:"), "stderr does not start with 'error:':{ctx}");
    for n in needles {
        assert!(stderr.contains(n), "stderr does not mention {n:?}:{ctx}");
    }
    stderr
}

#[track_caller]
fn assert_success(out: &Output) {
    assert!(out.status.success(), "subq failed:\n--- stdout ---\n{}\n--- stderr ---\n{}", text(&out.stdout), text(&out.stderr));
    assert!(!text(&out.stderr).contains("panicked"));
}

// ---------------------------------------------------------------------------------------------
// Tiny ONNX models built with the prost structs
// ---------------------------------------------------------------------------------------------

fn f32_vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims.iter().map(|&d| proto::Dimension { value: Some(proto::DimValue::DimValue(d)) }).collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto { tensor_type: Some(proto::TensorTypeProto { elem_type: dt::FLOAT, shape: Some(proto::TensorShapeProto { dim }) }) }),
        doc_string: String::new(),
    }
}

fn f32_tensor(name: &str, dims: &[i64], v: f32) -> TensorProto {
    let n: i64 = dims.iter().product();
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: dt::FLOAT, raw_data: (0..n).flat_map(|_| v.to_le_bytes()).collect(), ..Default::default() }
}

fn write_model(dir: &Path, file: &str, node: NodeProto, initializer: Vec<TensorProto>, input: ValueInfoProto, output: ValueInfoProto) -> PathBuf {
    let m = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(GraphProto { node: vec![node], name: "g".into(), initializer, input: vec![input], output: vec![output], ..Default::default() }),
        ..Default::default()
    };
    let path = dir.join(file);
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

/// Gemm-only classifier: input x [1,10] → y [1,3]. A valid model whose input is not an image.
fn gemm_model(dir: &Path) -> PathBuf {
    let node = NodeProto { op_type: "Gemm".into(), name: "fc".into(), input: vec!["x".into(), "w".into()], output: vec!["y".into()], ..Default::default() };
    write_model(dir, "gemm.onnx", node, vec![f32_tensor("w", &[10, 3], 0.1)], f32_vi("x", &[1, 10]), f32_vi("y", &[1, 3]))
}

/// One LSTM node (unsupported by subq).
fn lstm_model(dir: &Path) -> PathBuf {
    let node = NodeProto {
        op_type: "LSTM".into(),
        name: "encoder_lstm".into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        attribute: vec![AttributeProto { name: "hidden_size".into(), r#type: at::INT, i: 8, ..Default::default() }],
        ..Default::default()
    };
    write_model(dir, "lstm.onnx", node, vec![], f32_vi("x", &[1, 1, 4]), f32_vi("y", &[]))
}

// ---------------------------------------------------------------------------------------------
// subq inspect
// ---------------------------------------------------------------------------------------------

#[test]
fn inspect_missing_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_such_model.onnx");
    let out = subq([OsStr::new("inspect"), OsStr::new("--model"), path.as_os_str()]);
    let stderr = assert_clean_failure(&out, &["no_such_model.onnx", "cannot read"]);
    assert_eq!(stderr.matches("(os error").count(), 1, "the OS error is repeated:\n{stderr}");
}

#[test]
fn inspect_truncated_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(mobilenet()).unwrap();
    let path = dir.path().join("truncated.onnx");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = subq([OsStr::new("inspect"), OsStr::new("--model"), path.as_os_str()]);
    assert_clean_failure(&out, &["truncated.onnx", "not a valid ONNX"]);
}

#[test]
fn inspect_garbage_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.onnx");
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    let out = subq([OsStr::new("inspect"), OsStr::new("--model"), path.as_os_str()]);
    assert_clean_failure(&out, &["garbage.onnx"]);
}

#[test]
fn inspect_model_with_unsupported_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = lstm_model(dir.path());
    let out = subq([OsStr::new("inspect"), OsStr::new("--model"), path.as_os_str()]);
    assert_clean_failure(&out, &["lstm.onnx", "encoder_lstm", "LSTM", "opset 13"]);
}

#[test]
fn inspect_json_lists_layers() {
    let out = subq([OsStr::new("inspect"), OsStr::new("--model"), mobilenet().as_os_str(), OsStr::new("--json")]);
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let layers = v["layers"].as_array().expect("a \"layers\" array");
    assert!(!layers.is_empty());
}

// ---------------------------------------------------------------------------------------------
// subq eval
// ---------------------------------------------------------------------------------------------

/// `subq eval --model M --images I --preset keras-mobilenet --limit 4 EXTRA…`
fn eval(model: &Path, images: &Path, extra: &[&OsStr]) -> Output {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("eval"),
        OsStr::new("--model"),
        model.as_os_str(),
        OsStr::new("--images"),
        images.as_os_str(),
        OsStr::new("--preset"),
        OsStr::new("keras-mobilenet"),
        OsStr::new("--limit"),
        OsStr::new("4"),
    ];
    args.extend_from_slice(extra);
    subq(args)
}

#[test]
fn eval_model_whose_input_is_not_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let model = gemm_model(dir.path());
    let out = eval(&model, &eval_images(), &[]);
    assert_clean_failure(&out, &["'x'", "not an image", "[1, 10]"]);
}

#[test]
fn eval_missing_images_folder() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("no_such_images");
    let out = eval(&mobilenet(), &images, &[]);
    let stderr = assert_clean_failure(&out, &["no_such_images"]);
    assert_eq!(stderr.matches("(os error").count(), 1, "the OS error is repeated:\n{stderr}");
}

#[test]
fn eval_missing_labels_file() {
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("no_such_synsets.txt");
    let out = eval(&mobilenet(), &eval_images(), &[OsStr::new("--labels"), labels.as_os_str()]);
    let stderr = assert_clean_failure(&out, &["no_such_synsets.txt"]);
    assert_eq!(stderr.matches("(os error").count(), 1, "the OS error is repeated:\n{stderr}");
}

#[test]
fn eval_empty_images_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = eval(&mobilenet(), dir.path(), &[]);
    assert_clean_failure(&out, &["no images", &dir.path().display().to_string()]);
}

#[test]
fn eval_image_with_unknown_label() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(some_eval_image(), dir.path().join("n99999999_x.JPEG")).unwrap();
    let labels = assets().join("imagenet_synsets.txt");
    let out = eval(&mobilenet(), dir.path(), &[OsStr::new("--labels"), labels.as_os_str()]);
    assert_clean_failure(&out, &["n99999999_x.JPEG", "n99999999", "synsets"]);
}

/// A folder with one real image and one garbage file with an image name.
fn folder_with_unreadable_image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(some_eval_image(), dir.path().join("n01440764_good.JPEG")).unwrap();
    std::fs::write(dir.path().join("n01440764_bad.JPEG"), b"\x00\x01 this is not a JPEG \xff\xfe").unwrap();
    dir
}

#[test]
fn eval_unreadable_image_fails() {
    let dir = folder_with_unreadable_image();
    let out = eval(&mobilenet(), dir.path(), &[]);
    assert_clean_failure(&out, &["n01440764_bad.JPEG"]);
}

#[test]
fn eval_unreadable_image_with_skip_unreadable_succeeds() {
    let dir = folder_with_unreadable_image();
    let out = eval(&mobilenet(), dir.path(), &[OsStr::new("--skip-unreadable")]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("skipped"), "stdout does not mention the skipped image:\n{stdout}");
}

#[test]
fn eval_without_preset_on_model_without_metadata() {
    let out = subq([OsStr::new("eval"), OsStr::new("--model"), mobilenet().as_os_str(), OsStr::new("--images"), eval_images().as_os_str(), OsStr::new("--limit"), OsStr::new("4")]);
    assert_clean_failure(&out, &["--preset"]);
}

#[test]
fn eval_with_unknown_preset() {
    let out = subq([
        OsStr::new("eval"),
        OsStr::new("--model"),
        mobilenet().as_os_str(),
        OsStr::new("--images"),
        eval_images().as_os_str(),
        OsStr::new("--preset"),
        OsStr::new("no-such-preset"),
    ]);
    assert_clean_failure(&out, &["no-such-preset", "keras-mobilenet"]);
}

#[test]
fn eval_against_itself_as_reference_has_full_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = eval(&mobilenet(), &eval_images(), &[OsStr::new("--reference"), mobilenet().as_os_str(), OsStr::new("--json"), json.as_os_str()]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("report is JSON");
    assert_eq!(report["n"].as_u64(), Some(4), "{report}");
    assert_eq!(report["agreement"].as_f64(), Some(1.0), "{report}");
}

#[test]
fn json_to_stdout_leaves_the_text_to_stderr() {
    // eval against itself: full agreement, gain exactly 1.
    let out = eval(&mobilenet(), &eval_images(), &[OsStr::new("--reference"), mobilenet().as_os_str(), OsStr::new("--json"), OsStr::new("-")]);
    assert_success(&out);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is only JSON");
    assert_eq!(report["logits_gain"].as_f64(), Some(1.0), "{report}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("agreement:  100.00%"));
    let dir = tempfile::tempdir().unwrap();
    let q = quantize(&mobilenet(), &calib_images(), &dir.path().join("q.onnx"), &["--scheme", "per-tensor", "--calib-limit", "2", "--json", "-"]);
    assert_success(&q);
    let summary: serde_json::Value = serde_json::from_slice(&q.stdout).expect("stdout is only JSON");
    assert_eq!(summary["scheme"].as_str(), Some("per-tensor"), "{summary}");
    assert!(String::from_utf8_lossy(&q.stderr).contains("wrote "));
}

// ---------------------------------------------------------------------------------------------
// quantize
// ---------------------------------------------------------------------------------------------

fn quantize(model: &Path, calib: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec!["quantize".as_ref(), "--model".as_ref(), model.as_os_str(), "--calib".as_ref(), calib.as_os_str(), "--preset".as_ref(), "keras-mobilenet".as_ref(), "-o".as_ref(), output.as_os_str()];
    args.extend(extra.iter().map(|s| OsStr::new(*s)));
    subq(args)
}

/// Nothing, not even a temporary file, is left in the output folder after a failed quantize.
#[track_caller]
fn assert_no_output(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().ends_with(".onnx") || n.to_string_lossy().ends_with(".tmp")).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A QDQ model from elsewhere is turned back into float and quantized again, and the user is told.
#[test]
fn quantize_requantizes_an_already_quantized_model_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let qdq = assets().join("models/mobilenetv2_1.0_160_dogs.ort_qdq_per_tensor.onnx");
    let o = quantize(&qdq, &eval_images(), &out, &["--calib-limit", "2", "--scheme", "subtensor", "--cle", "--bias-correction-images", "2"]);
    assert_success(&o);
    assert!(text(&o.stderr).contains("already quantized (QDQ)"), "no note about the QDQ input: {}", text(&o.stderr));
    assert!(out.exists());
}

#[test]
fn quantize_with_an_empty_calibration_folder() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib");
    std::fs::create_dir(&calib).unwrap();
    let out = dir.path().join("q.onnx");
    assert_clean_failure(&quantize(&mobilenet(), &calib, &out, &[]), &["calib"]);
    assert_no_output(dir.path());
}

#[test]
fn quantize_with_an_undecodable_calibration_image() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib");
    std::fs::create_dir(&calib).unwrap();
    std::fs::write(calib.join("n01440764_broken.JPEG"), b"not a jpeg at all").unwrap();
    std::fs::copy(some_eval_image(), calib.join("n01440764_good.JPEG")).unwrap();
    let out = dir.path().join("q.onnx");
    assert_clean_failure(&quantize(&mobilenet(), &calib, &out, &["--scheme", "per-tensor"]), &["n01440764_broken.JPEG"]);
    assert_no_output(dir.path());
    // Skipping it, the one good image calibrates the model.
    let ok = quantize(&mobilenet(), &calib, &out, &["--scheme", "per-tensor", "--skip-unreadable"]);
    assert_success(&ok);
    assert!(text(&ok.stderr).contains("skipped unreadable calibration image"));
    assert!(out.exists());
}

#[test]
fn quantize_data_free_needs_no_images_and_writes_a_runnable_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.onnx");
    let o = subq(["quantize".as_ref(), "--model".as_ref(), mobilenet().as_os_str(), "--data-free".as_ref(), "--scheme".as_ref(), "subtensor".as_ref(), "--preset".as_ref(), "keras-mobilenet".as_ref(), "-o".as_ref(), out.as_os_str()]);
    assert_success(&o);
    let e = eval(&out, &eval_images(), &["--reference".as_ref(), mobilenet().as_os_str()]);
    assert_success(&e);
    assert!(text(&e.stdout).contains("int8 engine"), "{}", text(&e.stdout));
}

// ---------------------------------------------------------------------------------------------
// report and sensitivity
// ---------------------------------------------------------------------------------------------

fn calib_images() -> PathBuf {
    assets().join("images/calib")
}

/// MobileNetV2 with its first depthwise node renamed to carry markup.
const EVIL_NAME: &str = "expanded_conv_depthwise<evil>&\"x\"";

fn mobilenet_with_evil_name(dir: &Path) -> PathBuf {
    let mut m = ModelProto::decode(std::fs::read(mobilenet()).unwrap().as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let n = g.node.iter_mut().find(|n| n.name == "expanded_conv_depthwise").expect("node in the bundled model");
    n.name = EVIL_NAME.into();
    let path = dir.join("evil.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

fn report(model: &Path, calib: &Path, out: &Path, extra: &[&OsStr]) -> Output {
    let mut args: Vec<&OsStr> = vec!["report".as_ref(), "--model".as_ref(), model.as_os_str(), "--calib".as_ref(), calib.as_os_str(), "--preset".as_ref(), "keras-mobilenet".as_ref(), "--out".as_ref(), out.as_os_str()];
    args.extend_from_slice(extra);
    subq(args)
}

/// Files left in `dir` (none expected after a failure; `index.html` only after success).
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

#[test]
fn report_has_every_section_and_escapes_node_names() {
    let dir = tempfile::tempdir().unwrap();
    let model = mobilenet_with_evil_name(dir.path());
    let out = dir.path().join("report");
    let o = report(
        &model,
        &calib_images(),
        &out,
        &["--calib-limit", "4", "--analysis-images", "2", "--images"].map(OsStr::new).into_iter().chain([eval_images().as_os_str()]).chain(["--limit", "4", "--latency-runs", "1"].map(OsStr::new)).collect::<Vec<_>>(),
    );
    assert_success(&o);
    assert_eq!(files_in(&out), vec!["index.html".to_string()], "only the page is written");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for section in ["id=\"schemes\"", "id=\"ranges\"", "id=\"sqnr\"", "id=\"splits\"", "id=\"sensitivity\""] {
        assert!(html.contains(section), "missing section {section}");
    }
    // Inline SVG, balanced, and nothing loaded from outside the page.
    let svgs = html.matches("<svg").count();
    assert!(svgs > 2 * 53, "expected two strips per layer plus charts, found {svgs} <svg>");
    assert_eq!(svgs, html.matches("</svg>").count());
    for external in ["<script", "<link", "src=", "@import", "url("] {
        assert!(!html.contains(external), "page refers to something outside itself: {external}");
    }
    // Known layers, the scheme table rows and the split table.
    assert!(html.contains("block_2_depthwise"));
    for row in ["per-channel", "per-tensor + CLE + bias corr.", "data-free subtensor", "Residual"] {
        assert!(html.contains(row), "missing {row}");
    }
    // The model's node name is escaped everywhere it appears.
    assert!(!html.contains(EVIL_NAME), "raw node name in the page");
    assert!(!html.contains("<evil>"), "markup from the model in the page");
    assert!(html.contains("expanded_conv_depthwise&lt;evil&gt;&amp;&quot;x&quot;"));
}

#[test]
fn report_without_evaluation_images_leaves_the_scheme_table_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let o = report(&mobilenet(), &calib_images(), &out, &["--calib-limit", "2", "--analysis-images", "1"].map(OsStr::new));
    assert_success(&o);
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("Not measured: pass <code>--images DIR</code>"));
    for section in ["id=\"ranges\"", "id=\"sqnr\"", "id=\"splits\"", "id=\"sensitivity\""] {
        assert!(html.contains(section), "missing section {section}");
    }
    assert!(html.contains("block_2_depthwise"));
}

#[test]
fn sensitivity_json_ranks_every_layer_worst_first() {
    let o = subq(["sensitivity".as_ref(), "--model".as_ref(), mobilenet().as_os_str(), "--calib".as_ref(), calib_images().as_os_str(), "--preset".as_ref(), "keras-mobilenet".as_ref(), "--calib-limit".as_ref(), "2".as_ref(), "--json".as_ref(), "-".as_ref()]);
    assert_success(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is only JSON");
    let layers = v.as_array().expect("an array of layers");
    assert_eq!(layers.len(), 53);
    let sqnr: Vec<f64> = layers.iter().map(|l| l["logits_sqnr_db"].as_f64().expect("logits_sqnr_db")).collect();
    assert!(sqnr.windows(2).all(|w| w[0] <= w[1]), "not worst first: {sqnr:?}");
    let ranks: Vec<u64> = layers.iter().map(|l| l["rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks, (1..=53).collect::<Vec<u64>>());
    assert!(layers.iter().any(|l| l["node"] == "block_2_depthwise"));
}

#[test]
fn report_with_a_missing_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let o = report(&dir.path().join("no_such_model.onnx"), &calib_images(), &out, &[]);
    assert_clean_failure(&o, &["no_such_model.onnx"]);
    assert!(!out.exists(), "the output folder was created for nothing");
}

#[test]
fn report_with_an_empty_calibration_folder() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib");
    std::fs::create_dir(&calib).unwrap();
    let out = dir.path().join("report");
    let o = report(&mobilenet(), &calib, &out, &[]);
    assert_clean_failure(&o, &["calibration folder", "no images"]);
    assert!(!out.exists(), "the output folder was created for nothing");
}

#[test]
fn report_into_an_unwritable_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    // A folder below a regular file cannot be created, whoever runs the test.
    let blocker = dir.path().join("not_a_folder");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("report");
    let o = report(&mobilenet(), &calib_images(), &out, &["--calib-limit".as_ref(), "2".as_ref()]);
    assert_clean_failure(&o, &["output folder", "not_a_folder"]);
    assert_eq!(files_in(dir.path()), vec!["not_a_folder".to_string()], "something was left behind");
    assert_eq!(std::fs::read(&blocker).unwrap(), b"x");
}

#[test]
fn sensitivity_with_an_empty_calibration_folder() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("s.json");
    let o = subq(["sensitivity".as_ref(), "--model".as_ref(), mobilenet().as_os_str(), "--calib".as_ref(), dir.path().as_os_str(), "--preset".as_ref(), "keras-mobilenet".as_ref(), "--json".as_ref(), json.as_os_str()]);
    assert_clean_failure(&o, &["calibration folder", "no images"]);
    assert!(!json.exists());
}

/// `subq bench --json` names the kernel sets it ran, FP32 and int8; `SUBQ_SIMD=avx512` takes the
/// AMX tiles out, `SUBQ_SIMD=avx2` the 512-bit and VNNI kernels of both.
#[test]
fn bench_json_names_the_kernel_sets() {
    let sets = |simd: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_subq"));
        cmd.args([OsStr::new("--threads"), OsStr::new("1"), OsStr::new("bench"), OsStr::new("--model"), mobilenet().as_os_str(), OsStr::new("--runs"), OsStr::new("2"), OsStr::new("--warmup"), OsStr::new("1"), OsStr::new("--json")]);
        if let Some(v) = simd {
            cmd.env("SUBQ_SIMD", v);
        }
        let out = cmd.output().expect("run subq");
        assert_success(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench --json prints one JSON object");
        (v["int8_kernels"].as_str().unwrap_or("missing").to_string(), v["fp32_kernels"].as_str().unwrap_or("missing").to_string())
    };
    let (int8, fp32) = sets(None);
    assert!(["portable", "avx2", "avx2+avx-vnni", "avx2+avx-vnni+avx512-vnni", "avx2+avx-vnni+avx512-vnni+amx"].contains(&int8.as_str()), "int8 kernels {int8}");
    assert!(["portable", "avx2+fma", "avx2+fma+avx512"].contains(&fp32.as_str()), "fp32 kernels {fp32}");
    let (int8, _) = sets(Some("avx512"));
    assert!(!int8.contains("amx"), "SUBQ_SIMD=avx512 still reports {int8}");
    let (int8, fp32) = sets(Some("avx2"));
    assert!(!int8.contains("vnni") && !fp32.contains("avx512"), "SUBQ_SIMD=avx2 still reports {int8} / {fp32}");
}
