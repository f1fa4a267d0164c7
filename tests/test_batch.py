"""The batch job (animals10.batch): photos in, Parquet out, on a real local Ray and a loopback S3 server."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from animals10 import storage
from animals10.batch import (
    PART_PREFIX,
    SUMMARY_FILE,
    BatchConfig,
    ClassifyBatch,
    classify_images,
    list_parts,
    prediction_schema,
    read_and_decode,
)
from animals10.cli import main
from animals10.imaging import load_array
from animals10.labels import class_name_for_folder
from tests.conftest import _free_port, jpeg_bytes, random_photo

pytestmark = pytest.mark.ray


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def read_output(output_uri: str) -> pa.Table:
    """Every row of every part, read the way an analyst would (all files, then concatenated)."""
    tables = [pq.read_table(io.BytesIO(storage.read_bytes(uri))) for uri in list_parts(output_uri)]
    return pa.concat_tables(tables)


def read_summary(output_uri: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(output_uri, SUMMARY_FILE)))


def photo_paths(root) -> list[str]:
    return storage.list_files(str(Path(root).resolve()), storage.IMAGE_EXTENSIONS)


# --- Folder in, Parquet out: one job over the demo tree, several checks ------------------------


@pytest.fixture(scope="module")
def demo_output(ray_session, demo_tree, untrained_artifact, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("predictions") / "out")
    config = BatchConfig(untrained_artifact, str(demo_tree), output, batch_size=16, top_k=10, rows_per_file=50, progress=False)
    summary = classify_images(config)
    return output, summary


def test_folder_gives_one_row_per_photo_in_the_documented_schema(demo_output, demo_tree, untrained_artifact):
    output, summary = demo_output
    table = read_output(output)
    assert table.schema.equals(prediction_schema(with_true_label=True))
    assert sorted(table.column("path").to_pylist()) == photo_paths(demo_tree)
    assert table.column("error").null_count == table.num_rows
    assert set(table.column("model").to_pylist()) == {json.loads((Path(untrained_artifact) / "model_card.json").read_text())["id"]}
    # 120 rows at 50 a part; nothing else is visible beside the parts and the summary.
    names = sorted(p.name for p in Path(output).iterdir())
    assert names[0] == SUMMARY_FILE and len(names) == 1 + 3
    assert all(n.startswith(PART_PREFIX) and n.endswith(".parquet") for n in names[1:])
    assert summary.complete and summary.files_seen == table.num_rows == 120
    assert read_summary(output)["classified"] == 120
    assert sum(read_summary(output)["per_class"].values()) == 120


def test_labelled_tree_gets_true_labels_from_its_class_folders(demo_output):
    table = read_output(demo_output[0]).to_pylist()
    for row in table:
        assert row["true_label"] == class_name_for_folder(Path(row["path"]).parent.name)
    assert {row["true_label"] for row in table} >= {"dog", "cat", "squirrel"}


def test_batch_job_gives_the_same_probabilities_as_the_predictor(demo_output, untrained_artifact):
    from animals10.predictor import Predictor

    rows = read_output(demo_output[0]).to_pylist()[:24]
    predictor = Predictor(untrained_artifact, device="cpu", top_k=10)
    images = np.stack([load_array(Path(r["path"]).read_bytes(), predictor.image_size) for r in rows])
    expected = predictor.predict_probabilities(images)
    for row, probabilities in zip(rows, expected):
        got = np.zeros(len(predictor.class_names), dtype=np.float32)
        for entry in row["top_k"]:
            got[predictor.class_names.index(entry["label"])] = entry["prob"]
        np.testing.assert_allclose(got, probabilities, rtol=1e-5, atol=1e-6)
        assert row["label"] == predictor.class_names[int(np.argmax(probabilities))]
        assert row["confidence"] == pytest.approx(float(probabilities.max()), abs=1e-6)


# --- Bad files never stop the job -------------------------------------------------------------


def write_mixed_folder(root: Path) -> dict[str, str | None]:
    """Good photos of every format and every kind of bad file; returns name -> expected error kind."""
    photo = random_photo(1)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    noisy_jpeg = encode(random_photo(3), "JPEG", quality=90)
    good_png = encode(photo, "PNG")
    broken_png = bytearray(good_png)
    broken_png[len(broken_png) // 2: len(broken_png) // 2 + 64] = bytes(64)
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")  # 81 Mpx in a 10 kB file: over the 64 Mpx limit
    files = {
        "good/a.jpg": (jpeg_bytes(), None),
        "good/B.JPG": (jpeg_bytes((20, 200, 40)), None),
        "good/nested/c.jpeg": (noisy_jpeg, None),
        "good/d.png": (encode(rgba, "PNG"), None),
        "good/e.webp": (encode(photo, "WEBP"), None),
        "good/f.bmp": (encode(photo, "BMP"), None),
        "good/g.GIF": (encode(photo, "GIF"), None),
        "bad/empty.jpg": (b"", "empty"),
        "bad/notes.jpg": (b"these are notes, not a photo\n", "not_image"),
        "bad/truncated.jpg": (noisy_jpeg[: len(noisy_jpeg) * 6 // 10], "corrupt"),
        "bad/broken.png": (bytes(broken_png), "corrupt"),
        "bad/bomb.png": (bomb.getvalue(), "too_large"),
    }
    for name, (data, _) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "good" / "readme.txt").write_text("not listed: no image extension")
    return {name: kind for name, (_, kind) in files.items()}


def test_every_bad_file_gets_a_row_with_its_error_and_the_job_goes_on(ray_session, untrained_artifact, tmp_path):
    expected = write_mixed_folder(tmp_path / "photos")
    output = str(tmp_path / "out")
    summary = classify_images(BatchConfig(untrained_artifact, str(tmp_path / "photos"), output, batch_size=4, progress=False))

    rows = {Path(r["path"]).relative_to((tmp_path / "photos").resolve()).as_posix(): r for r in read_output(output).to_pylist()}
    assert sorted(rows) == sorted(expected)  # one row per image file, and the .txt file is not one
    for name, kind in expected.items():
        row = rows[name]
        if kind is None:
            assert row["error"] is None and row["label"] is not None and 0 <= row["label_index"] < 10, name
            assert len(row["top_k"]) == 3 and row["confidence"] == row["top_k"][0]["prob"]
        else:
            assert row["error"].startswith(f"{kind}: "), (name, row["error"])
            assert row["label"] is None and row["label_index"] is None and row["confidence"] is None and row["top_k"] is None
    assert "true_label" not in read_output(output).column_names  # folders good/bad are not classes
    assert summary.failed_by_kind == {"corrupt": 2, "empty": 1, "not_image": 1, "too_large": 1}
    assert read_summary(output)["classified"] == 7 and read_summary(output)["failed"] == 5


# --- S3 in and out ----------------------------------------------------------------------------


def test_bucket_in_and_parquet_back_into_the_bucket(ray_session, untrained_artifact, s3_bucket, s3_server, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # --s3-endpoint sets it; restored afterwards
    client = storage.s3_client()
    names = [f"photos/{cls}/{n}.jpg" for cls in ("gatto", "cane") for n in range(5)]
    for i, key in enumerate(names):
        client.put_object(Bucket=s3_bucket, Key=key, Body=encode(random_photo(i), "JPEG"))
    client.put_object(Bucket=s3_bucket, Key="photos/cane/zero.JPEG", Body=b"")
    storage.upload_dir(untrained_artifact, f"s3://{s3_bucket}/models/custom_cnn")

    code = main(
        [
            "infer",
            "--model", f"s3://{s3_bucket}/models/custom_cnn",
            "--input", f"s3://{s3_bucket}/photos/",
            "--output", f"s3://{s3_bucket}/predictions",
            "--batch-size", "4",
            "--rows-per-file", "5",
            "--s3-endpoint", s3_server,
            "--gpu-decode",  # no GPU here: must fall back to CPU decoding
            "--no-progress",
        ]
    )
    assert code == 0
    table = read_output(f"s3://{s3_bucket}/predictions")
    assert sorted(table.column("path").to_pylist()) == sorted(f"s3://{s3_bucket}/{k}" for k in names + ["photos/cane/zero.JPEG"])
    rows = {r["path"].rsplit("/", 2)[-2] + "/" + r["path"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert rows["cane/zero.JPEG"]["error"].startswith("empty: ")
    assert rows["gatto/0.jpg"]["true_label"] == "cat" and rows["cane/0.jpg"]["true_label"] == "dog"
    assert len(list_parts(f"s3://{s3_bucket}/predictions")) == 3
    assert read_summary(f"s3://{s3_bucket}/predictions")["files_seen"] == 11
    assert "Predictions written to" in capsys.readouterr().out


# --- Interrupted, then resumed ----------------------------------------------------------------


def test_interrupted_job_resumed_has_no_duplicates_and_no_gaps(ray_session, demo_tree, untrained_artifact, tmp_path):
    output = str(tmp_path / "out")
    config = BatchConfig(untrained_artifact, str(demo_tree), output, batch_size=8, rows_per_file=8, progress=False, stop_after_parts=3)
    first = classify_images(config)
    assert first.stopped_early and not first.complete
    parts = sorted(list_parts(output))
    assert len(parts) == 3 and read_output(output).num_rows == 24
    os.remove(parts[0])  # a part lost as well: its photos must be classified again

    with pytest.raises(Exception, match="--resume"):
        classify_images(BatchConfig(untrained_artifact, str(demo_tree), output, progress=False))

    config.resume, config.stop_after_parts = True, None
    second = classify_images(config)
    table = read_output(output)
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 120
    assert sorted(paths) == photo_paths(demo_tree)
    assert second.already_done == 16 and second.processed_this_run == 104 and second.complete
    assert set(parts[1:]) <= set(list_parts(output))  # the parts that survived were kept, not rewritten

    third = classify_images(config)  # nothing left to do
    assert third.processed_this_run == 0 and third.complete and read_output(output).num_rows == 120


# --- An inference replica killed mid-job ------------------------------------------------------


def parent_pid(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def inference_actor_pids() -> list[int]:
    """Processes of this session's inference actors: descendants of this process (the local Ray it
    started) whose title names the class."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if not (title.startswith(b"ray::") and b"ClassifyBatch" in title):
            continue
        ancestor = int(entry.name)
        while ancestor > 1 and ancestor != os.getpid():
            ancestor = parent_pid(ancestor)
        if ancestor == os.getpid():
            pids.append(int(entry.name))
    return pids


def test_killed_inference_actor_is_replaced_and_every_photo_still_has_one_row(ray_session, demo_tree, untrained_artifact, tmp_path):
    output = str(tmp_path / "out")
    killed: list[int] = []

    def kill_actor_once(part_uri: str) -> None:
        # Called on the driver after the first part: most photos are still to be classified.
        if not killed:
            pids = inference_actor_pids()
            assert pids, "no inference actor process found"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed.extend(pids)

    config = BatchConfig(untrained_artifact, str(demo_tree), output, batch_size=4, concurrency=1, rows_per_file=4, progress=False)
    summary = classify_images(config, on_part_written=kill_actor_once)

    assert killed and not set(killed) & set(inference_actor_pids())
    table = read_output(output)
    paths = table.column("path").to_pylist()
    assert sorted(paths) == photo_paths(demo_tree) and len(paths) == len(set(paths))
    assert table.column("error").null_count == table.num_rows  # the batch in flight was retried, not lost
    assert summary.complete


# --- GPU decoding falls back to the CPU where there is no GPU (no Ray needed) -----------------


def test_gpu_decode_without_a_gpu_decodes_on_the_cpu_with_the_same_result(untrained_artifact, tmp_path):
    photos = {"a.jpg": encode(random_photo(5), "JPEG"), "b.png": encode(random_photo(6), "PNG"), "c.jpg": b"junk"}
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    batch = {"path": np.array([str(tmp_path / n) for n in photos], dtype=object)}
    plain = read_and_decode(batch, 64)
    gpu_style = read_and_decode(batch, 64, keep_jpeg_bytes=True)
    assert gpu_style["jpeg"][0] == photos["a.jpg"] and gpu_style["jpeg"][1] == b""  # PNGs decode on the CPU
    classify = ClassifyBatch(untrained_artifact, top_k=3, gpu_decode=True)
    assert not classify.gpu_decode
    assert classify(gpu_style).to_pylist() == classify(plain).to_pylist()
    assert classify(plain).column("error").to_pylist()[2].startswith("not_image: ")


# --- Bad input: one sentence and a non-zero exit ----------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["infer", *argv, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.fixture
def photo_dir(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(jpeg_bytes())
    return tmp_path / "photos"


def assert_one_sentence(code: int, message: str, *words: str) -> None:
    assert code != 0
    assert message.startswith("error: ") and message.endswith(".") and "Traceback" not in message
    for word in words:
        assert word in message, message


def test_bad_model_path_is_one_sentence(capsys, photo_dir, tmp_path):
    code, message = run_cli(capsys, "--model", str(tmp_path / "no-model"), "--input", str(photo_dir), "--output", str(tmp_path / "out"))
    assert_one_sentence(code, message, "no-model", "not a model artifact")


def test_input_without_images_is_one_sentence(capsys, untrained_artifact, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    code, message = run_cli(capsys, "--model", untrained_artifact, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    assert_one_sentence(code, message, "No images were found", "empty")
    code, message = run_cli(capsys, "--model", untrained_artifact, "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"))
    assert_one_sentence(code, message, "missing", "does not exist")


def test_output_not_writable_is_one_sentence(capsys, untrained_artifact, photo_dir, tmp_path):
    (tmp_path / "a-file").write_text("a file, not a folder")
    code, message = run_cli(capsys, "--model", untrained_artifact, "--input", str(photo_dir), "--output", str(tmp_path / "a-file" / "out"))
    assert_one_sentence(code, message, "Cannot write to", "a-file")


def test_unreachable_s3_is_one_sentence(capsys, untrained_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL", ""))  # restored after --s3-endpoint
    nobody = f"http://127.0.0.1:{_free_port()}"
    code, message = run_cli(capsys, "--model", untrained_artifact, "--input", "s3://photos/x/", "--output", str(tmp_path / "out"), "--s3-endpoint", nobody)
    assert_one_sentence(code, message, "Cannot reach the S3 endpoint", "s3://photos/x")
