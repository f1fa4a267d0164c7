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
from animals10.batch.job import BatchConfig, classify_images
from animals10.batch.parts import PART_PREFIX, PART_SUFFIX, SUMMARY_FILE, prediction_schema, read_part_stats
from animals10.batch.sources import Shard
from animals10.batch.steps import ClassifyShard, _shard_table, decode_shard
from animals10.card import Preprocessing
from animals10.cli.main import main
from animals10.imaging import load_array
from animals10.labels import ANIMALS10_CLASSES, class_name_for_folder
from tests.conftest import _free_port, jpeg_bytes, random_photo
from tests.s3_proxy import S3Proxy

pytestmark = pytest.mark.ray


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def list_parts(output_uri: str) -> list[str]:
    return [u for u in storage.list_files(output_uri, (PART_SUFFIX,)) if u.rsplit("/", 1)[-1].startswith(PART_PREFIX)]


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
    config = BatchConfig(
        untrained_artifact, str(demo_tree), output, batch_size=16, top_k=10, rows_per_file=50, progress=False
    )
    summary = classify_images(config)
    return output, summary


def test_folder_gives_one_row_per_photo_in_the_documented_schema(demo_output, demo_tree, untrained_artifact):
    output, summary = demo_output
    table = read_output(output)
    assert table.schema.equals(prediction_schema(with_true_label=True, unknown=True))
    assert sorted(table.column("path").to_pylist()) == photo_paths(demo_tree)
    assert table.column("error").null_count == table.num_rows
    assert set(table.column("model").to_pylist()) == {
        json.loads((Path(untrained_artifact) / "model_card.json").read_text())["id"]
    }
    # 12 photos in each of 10 class folders, two parts a folder (6 rows, an eighth of 50, then the other
    # 6); nothing else is visible beside the parts and the summary.
    names = sorted(p.name for p in Path(output).iterdir())
    assert names[0] == SUMMARY_FILE and len(names) == 1 + 20
    assert all(n.startswith(PART_PREFIX) and n.endswith(".parquet") for n in names[1:])
    assert summary.parts_written == summary.parts == 20
    for name in names[1:]:  # each part says when its replica began it and for how long it classified
        stats = read_part_stats(str(Path(output) / name))
        assert stats["started_at"] <= (Path(output) / name).stat().st_mtime and stats["classify_seconds"] >= 0
    assert summary.complete and summary.files_seen == table.num_rows == 120
    assert read_summary(output)["classified"] == 120
    assert sum(read_summary(output)["per_class"].values()) == 120
    # The artifact's threshold sits at the median of random photos' scores: some are flagged, some not.
    flags = table.column("unknown").to_pylist()
    assert read_summary(output)["unknown"] == summary.unknown == sum(flags) and 0 < sum(flags) < 120


def test_labelled_tree_gets_true_labels_from_its_class_folders(demo_output):
    table = read_output(demo_output[0]).to_pylist()
    for row in table:
        assert row["true_label"] == class_name_for_folder(Path(row["path"]).parent.name)
    assert {row["true_label"] for row in table} >= {"dog", "cat", "squirrel"}


def test_batch_job_gives_the_same_probabilities_and_unknown_flags_as_the_predictor(demo_output, untrained_artifact):
    from animals10.predictor import Predictor

    rows = read_output(demo_output[0]).to_pylist()[:24]
    predictor = Predictor(untrained_artifact, device="cpu", top_k=10)
    images = np.stack([load_array(Path(r["path"]).read_bytes(), predictor.preprocessing) for r in rows])
    prediction = predictor.predict(images)
    assert [r["unknown"] for r in rows] == prediction.unknown.tolist()
    np.testing.assert_allclose([r["unknown_score"] for r in rows], prediction.unknown_score, rtol=1e-5)
    for row, probabilities in zip(rows, prediction.probabilities):
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
    broken_png[len(broken_png) // 2 : len(broken_png) // 2 + 64] = bytes(64)
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
    summary = classify_images(
        BatchConfig(untrained_artifact, str(tmp_path / "photos"), output, batch_size=4, progress=False)
    )

    rows = {
        Path(r["path"]).relative_to((tmp_path / "photos").resolve()).as_posix(): r
        for r in read_output(output).to_pylist()
    }
    assert sorted(rows) == sorted(expected)  # one row per image file, and the .txt file is not one
    for name, kind in expected.items():
        row = rows[name]
        if kind is None:
            assert row["error"] is None and row["label"] is not None and 0 <= row["label_index"] < 10, name
            assert len(row["top_k"]) == 3 and row["confidence"] == row["top_k"][0]["prob"]
        else:
            assert row["error"].startswith(f"{kind}: "), (name, row["error"])
            assert (
                row["label"] is None
                and row["label_index"] is None
                and row["confidence"] is None
                and row["top_k"] is None
            )
    assert "true_label" not in read_output(output).column_names  # folders good/bad are not classes
    assert summary.failed_by_kind == {"corrupt": 2, "empty": 1, "not_image": 1, "too_large": 1}
    assert read_summary(output)["classified"] == 7 and read_summary(output)["failed"] == 5


# --- S3 in and out ----------------------------------------------------------------------------


def test_bucket_in_and_parquet_back_into_the_bucket(
    ray_session, untrained_artifact, s3_bucket, s3_server, monkeypatch, capsys
):
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
            "--model",
            f"s3://{s3_bucket}/models/custom_cnn",
            "--input",
            f"s3://{s3_bucket}/photos/",
            "--output",
            f"s3://{s3_bucket}/predictions",
            "--batch-size",
            "4",
            "--rows-per-file",
            "5",
            "--s3-endpoint",
            s3_server,
            "--decode",
            "gpu",  # no GPU here: must fall back to CPU decoding
            "--no-progress",
        ]
    )
    assert code == 0
    table = read_output(f"s3://{s3_bucket}/predictions")
    assert sorted(table.column("path").to_pylist()) == sorted(
        f"s3://{s3_bucket}/{k}" for k in names + ["photos/cane/zero.JPEG"]
    )
    rows = {r["path"].rsplit("/", 2)[-2] + "/" + r["path"].rsplit("/", 1)[-1]: r for r in table.to_pylist()}
    assert rows["cane/zero.JPEG"]["error"].startswith("empty: ")
    assert rows["gatto/0.jpg"]["true_label"] == "cat" and rows["cane/0.jpg"]["true_label"] == "dog"
    assert len(list_parts(f"s3://{s3_bucket}/predictions")) == 8  # 1, 1, 2 and 1 or 2 rows in each folder
    assert read_summary(f"s3://{s3_bucket}/predictions")["files_seen"] == 11
    assert "Predictions written to" in capsys.readouterr().out
    # Resumed on S3: every part is found by its shard's name and kept.
    config = BatchConfig(
        f"s3://{s3_bucket}/models/custom_cnn",
        f"s3://{s3_bucket}/photos/",
        f"s3://{s3_bucket}/predictions",
        rows_per_file=5,
        resume=True,
        progress=False,
    )
    again = classify_images(config)
    assert (
        again.already_done == 11
        and again.processed_this_run == 0
        and read_output(f"s3://{s3_bucket}/predictions").num_rows == 11
    )


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
        if not (title.startswith(b"ray::") and b"ClassifyShard" in title):
            continue
        ancestor = int(entry.name)
        while ancestor > 1 and ancestor != os.getpid():
            ancestor = parent_pid(ancestor)
        if ancestor == os.getpid():
            pids.append(int(entry.name))
    return pids


def test_killed_inference_actor_is_replaced_and_every_photo_still_has_one_row(
    ray_session, demo_tree, untrained_artifact, tmp_path
):
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

    config = BatchConfig(
        untrained_artifact, str(demo_tree), output, batch_size=4, concurrency=1, rows_per_file=4, progress=False
    )
    summary = classify_images(config, on_part_written=kill_actor_once)

    assert killed and not set(killed) & set(inference_actor_pids())
    table = read_output(output)
    paths = table.column("path").to_pylist()
    assert sorted(paths) == photo_paths(demo_tree) and len(paths) == len(set(paths))
    assert table.column("error").null_count == table.num_rows  # the batch in flight was retried, not lost
    assert summary.complete


# --- GPU decoding falls back to the CPU where there is no GPU (no Ray needed) -----------------


def test_gpu_decode_without_a_gpu_decodes_on_the_cpu_with_the_same_result(untrained_artifact, tmp_path):
    photos = {
        "a.jpg": encode(random_photo(5), "JPEG"),
        "b.png": encode(random_photo(6), "PNG"),
        "c.jpg": b"junk",
        "d.jpg": encode(random_photo(7), "JPEG"),
    }
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    shard = _shard_table(Shard("s-000000", paths=[str(tmp_path / n) for n in photos], errors=[""] * 4), None)
    plain = decode_shard(shard, Preprocessing(64))
    gpu_style = decode_shard(shard, Preprocessing(64), gpu_share=1.0)
    mixed = decode_shard(shard, Preprocessing(64), gpu_share=0.5)
    assert gpu_style.column("jpegs")[0].as_py() == [
        photos["a.jpg"],
        b"",
        b"",
        photos["d.jpg"],
    ]  # PNGs decode on the CPU
    assert sum(1 for b in mixed.column("jpegs")[0].as_py() if b) == 1  # half of the JPEGs
    job = {"model": "m", "input": str(tmp_path), "rows_per_part": 4, "columns": []}
    classify = ClassifyShard(untrained_artifact, str(tmp_path / "out"), job, labelled=False, gpu_decode=True)
    assert not classify.gpu_decode
    results = []
    for decoded in (plain, gpu_style, mixed):
        classify(decoded)
        results.append(read_output(str(tmp_path / "out")).to_pylist())
    assert results[0] == results[1] == results[2]
    assert results[0][2]["error"].startswith("not_image: ")


@pytest.mark.parametrize("photo_size", [(300, 200), (150, 260)])
def test_the_device_decode_path_crops_as_the_cpu_path_does(tmp_path, photo_size):
    """A timm-style card (bicubic, centre crop): torchvision's decode and torch's resize on the model's
    device cut the same square as Pillow does (run here on the CPU, as on a GPU without nvJPEG)."""
    from skimage import data

    from animals10.artifact import save_artifact
    from animals10.card import ModelCard
    from animals10.models import create_model

    preprocessing = Preprocessing(64, interpolation="bicubic", crop_fraction=0.875)
    uri = str(tmp_path / "cropping")
    card = ModelCard("custom_cnn", list(ANIMALS10_CLASSES), preprocessing)
    save_artifact(create_model("custom_cnn", len(ANIMALS10_CLASSES)), card, uri)
    job = {"model": "m", "input": str(tmp_path), "rows_per_part": 4, "columns": []}
    classify = ClassifyShard(uri, str(tmp_path / "out"), job, labelled=False)
    jpeg = encode(np.asarray(Image.fromarray(data.astronaut()).resize(photo_size)), "JPEG")
    [on_device] = classify._decode_on_device([0], [jpeg]).values()
    on_cpu = load_array(jpeg, preprocessing)
    assert on_device.shape == on_cpu.shape == (64, 64, 3)
    # Decoders and resampling kernels differ by a few levels; a square cut elsewhere differs by tens.
    difference = np.abs(on_device.astype(np.int16) - on_cpu.astype(np.int16)).mean()
    shifted = np.abs(on_device[:, 4:].astype(np.int16) - on_cpu[:, :-4].astype(np.int16)).mean()
    assert difference < 4 < shifted


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
    code, message = run_cli(
        capsys, "--model", str(tmp_path / "no-model"), "--input", str(photo_dir), "--output", str(tmp_path / "out")
    )
    assert_one_sentence(code, message, "no-model", "not a model artifact")


def test_input_without_images_is_one_sentence(capsys, untrained_artifact, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    code, message = run_cli(
        capsys, "--model", untrained_artifact, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out")
    )
    assert_one_sentence(code, message, "No images were found", "empty")
    code, message = run_cli(
        capsys, "--model", untrained_artifact, "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out")
    )
    assert_one_sentence(code, message, "missing", "does not exist")


def test_output_not_writable_is_one_sentence(capsys, untrained_artifact, photo_dir, tmp_path):
    (tmp_path / "a-file").write_text("a file, not a folder")
    code, message = run_cli(
        capsys, "--model", untrained_artifact, "--input", str(photo_dir), "--output", str(tmp_path / "a-file" / "out")
    )
    assert_one_sentence(code, message, "Cannot write to", "a-file")


def test_unreachable_s3_is_one_sentence(capsys, untrained_artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL", ""))  # restored after --s3-endpoint
    nobody = f"http://127.0.0.1:{_free_port()}"
    code, message = run_cli(
        capsys,
        "--model",
        untrained_artifact,
        "--input",
        "s3://photos/x/",
        "--output",
        str(tmp_path / "out"),
        "--s3-endpoint",
        nobody,
    )
    assert_one_sentence(code, message, "Cannot reach the S3 endpoint", "s3://photos/x")


# --- Streaming: classification starts while listing goes on -----------------------------------


class HeldListing:
    """Holds back the job's S3 listing requests (its small pages, not the driver's planning pages of
    1,000) while `hold(prefix, request_number)` says so, for at most a minute; `timed_out` records
    whether it ever had to give up waiting."""

    def __init__(self, page_size: int, hold):
        import threading

        self.page_size, self.hold = str(page_size), hold
        self.requests: list[str] = []  # the prefix of each
        self.starts: list[str | None] = []  # the key each lists after, if any
        self.timed_out = False
        self.lock = threading.Lock()
        self.released = threading.Event()

    def __call__(self, method: str, path: str):
        import time
        from urllib.parse import parse_qs, urlparse

        query = parse_qs(urlparse(path).query)
        if method != "GET" or query.get("list-type") != ["2"] or query.get("max-keys") != [self.page_size]:
            return None
        with self.lock:
            self.requests.append(query.get("prefix", [""])[0])
            self.starts.append(query.get("start-after", [None])[0])
            number = len(self.requests)
        deadline = time.monotonic() + 60
        while self.hold(query.get("prefix", [""])[0], number) and not self.released.is_set():
            if time.monotonic() > deadline:
                self.timed_out = True
                break
            time.sleep(0.05)
        return None


def resume_watching_listing(config: BatchConfig, monkeypatch) -> tuple:
    """Resumes the job through a proxy that records its listing requests (pages of 4): (summary, HeldListing)."""
    held = HeldListing(page_size=4, hold=lambda prefix, number: False)
    proxy = S3Proxy(os.environ["AWS_ENDPOINT_URL"], before=held)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    config.resume = True
    try:
        return classify_images(config), held
    finally:
        proxy.close()


def put_photos(bucket: str, keys: list[str]) -> list[str]:
    client = storage.s3_client()
    for i, key in enumerate(keys):
        client.put_object(Bucket=bucket, Key=key, Body=encode(random_photo(i, size=(48, 40)), "JPEG"))
    return sorted(f"s3://{bucket}/{k}" for k in keys)


def test_the_first_part_is_written_before_the_listing_has_finished(
    ray_session, untrained_artifact, s3_bucket, tmp_path, monkeypatch
):
    expected = put_photos(s3_bucket, [f"photos/{i:02d}.jpg" for i in range(12)])
    output = tmp_path / "out"
    # Every listing page after the first waits until a part exists: a job that lists everything
    # before it classifies would wait here until the gate gives up.
    held = HeldListing(page_size=4, hold=lambda prefix, number: number > 1 and not list(output.glob("part-*.parquet")))
    proxy = S3Proxy(os.environ["AWS_ENDPOINT_URL"], before=held)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        summary = classify_images(
            BatchConfig(
                untrained_artifact,
                f"s3://{s3_bucket}/photos/",
                str(output),
                batch_size=4,
                rows_per_file=4,
                progress=False,
            )
        )
    finally:
        proxy.close()
    assert not held.timed_out and len(held.requests) >= 3
    assert sorted(read_output(str(output)).column("path").to_pylist()) == expected
    assert summary.files_seen == 12 and summary.parts == 5  # 1, 1, 2, 4, 4 rows


def test_the_listing_stays_a_few_shards_ahead_of_the_written_parts(
    ray_session, untrained_artifact, s3_bucket, tmp_path, monkeypatch
):
    expected = put_photos(s3_bucket, [f"many/{i:02d}.jpg" for i in range(40)])
    output = tmp_path / "out"
    parts_at_request: list[int] = []  # parts written when the job sent each listing request (pages of 4)

    def record(prefix: str, number: int) -> bool:
        if len(parts_at_request) < number:
            parts_at_request.append(len(list(output.glob("part-*.parquet"))))
        return False  # never holds

    held = HeldListing(page_size=4, hold=record)
    proxy = S3Proxy(os.environ["AWS_ENDPOINT_URL"], before=held)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setattr("animals10.batch.job.shards_listed_ahead", lambda: 2)
    try:
        summary = classify_images(
            BatchConfig(untrained_artifact, f"s3://{s3_bucket}/many/", str(output), rows_per_file=4, progress=False)
        )
    finally:
        proxy.close()
    # Request k (from 1) comes after 4(k-1) photos, k+1 whole shards (1, 1, 2, then 4 photos each) of
    # which at most 2 are unfinished and one is held back for its successor: k-2 parts exist. A job
    # that lists ahead unchecked sends all ten while its replica is still starting.
    assert len(parts_at_request) >= 10
    assert all(parts >= k - 2 for k, parts in enumerate(parts_at_request, start=1)), parts_at_request
    assert sorted(read_output(str(output)).column("path").to_pylist()) == expected and summary.parts == 12


def test_sub_prefixes_are_listed_in_parallel(ray_session, untrained_artifact, s3_bucket, tmp_path, monkeypatch):
    expected = put_photos(
        s3_bucket, [f"photos/{folder}/{i}.jpg" for folder in ("2026-11-30", "2026-12-01") for i in range(3)]
    )
    # Each folder's first listing request waits until the other folder's listing has begun too:
    # listed one after the other, the first would wait until the gate gives up.
    held = HeldListing(page_size=3, hold=lambda prefix, number: len(set(held.requests)) < 2)
    proxy = S3Proxy(os.environ["AWS_ENDPOINT_URL"], before=held)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    try:
        summary = classify_images(
            BatchConfig(
                untrained_artifact, f"s3://{s3_bucket}/photos", str(tmp_path / "out"), rows_per_file=3, progress=False
            )
        )
    finally:
        proxy.close()
    assert not held.timed_out and {p.rsplit("/", 2)[-2] for p in held.requests} == {"2026-11-30", "2026-12-01"}
    assert sorted(read_output(str(tmp_path / "out")).column("path").to_pylist()) == expected
    assert "true_label" not in read_output(str(tmp_path / "out")).column_names and summary.parts == 6


# --- A killed job, resumed --------------------------------------------------------------------


def test_a_job_killed_midway_and_resumed_has_one_row_per_photo_and_keeps_its_parts(
    ray_session, untrained_artifact, s3_bucket, tmp_path, monkeypatch
):
    import subprocess
    import sys
    import time

    expected = put_photos(s3_bucket, [f"photos/{i:02d}.jpg" for i in range(24)])
    output = tmp_path / "out"
    # Listing stops after two pages of four until the job has been killed: the kill lands midway.
    killed = []
    held = HeldListing(page_size=4, hold=lambda prefix, number: number > 2 and not killed)
    proxy = S3Proxy(os.environ["AWS_ENDPOINT_URL"], before=held)
    argv = [sys.executable, "-m", "animals10.cli", "infer", "--model", untrained_artifact, "--input", f"s3://{s3_bucket}/photos/",
            "--output", str(output), "--rows-per-file", "4", "--batch-size", "4", "--no-progress"]  # fmt: skip
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
    }
    job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(list(output.glob("part-*.parquet"))) < 2 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
        finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in output.glob("part-*.parquet")}
        finished_rows = sum(pq.read_metadata(output / name).num_rows for name in finished)
        killed.append(True)
        assert 2 <= len(finished) < 8  # of 8 parts: 1, 1, 2, then 4 rows each

        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        config = BatchConfig(
            untrained_artifact, f"s3://{s3_bucket}/photos/", str(output), batch_size=4, rows_per_file=4, progress=False
        )
        with pytest.raises(Exception, match="--resume"):
            classify_images(config)
        config.resume = True
        summary = classify_images(config)
    finally:
        proxy.close()
    paths = read_output(str(output)).column("path").to_pylist()
    assert sorted(paths) == expected and len(paths) == len(set(paths))
    kept = {name: (p.stat().st_ino, p.stat().st_mtime_ns) for name in finished for p in [output / name]}
    assert kept == finished  # the parts of the killed run were kept as they were, not rewritten
    assert summary.complete and summary.files_seen == 24 and summary.already_done >= finished_rows
    assert summary.already_done + summary.processed_this_run == 24

    again = classify_images(config)  # nothing left to do
    assert again.processed_this_run == 0 and again.already_done == 24 and read_output(str(output)).num_rows == 24


def test_a_resume_lists_only_the_folders_it_has_left_and_writes_only_the_missing_part(
    ray_session, untrained_artifact, s3_bucket, tmp_path, monkeypatch
):
    expected = put_photos(s3_bucket, [f"again/{c}/{i}.jpg" for c in ("cane", "gatto", "mucca") for i in range(6)])
    output = tmp_path / "out"
    config = BatchConfig(
        untrained_artifact, f"s3://{s3_bucket}/again/", str(output), batch_size=4, rows_per_file=4, progress=False
    )
    classify_images(config)
    parts = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in output.glob("part-*.parquet")}
    assert len(parts) == 12  # 1, 1, 2 and 2 rows in each folder
    lost = next(n for n in sorted(parts) if "/gatto/" in pq.read_table(output / n).column("path")[0].as_py())
    lost_rows = pq.read_metadata(output / lost).num_rows
    (output / lost).unlink()
    # The resume finds the finished folders from its parts' names and lists only the one it has left.
    summary, held = resume_watching_listing(config, monkeypatch)
    assert held.requests and {prefix.split("/")[1] for prefix in held.requests} == {"gatto"}
    assert summary.processed_this_run == lost_rows and summary.parts_written == 1
    assert summary.already_done == 18 - lost_rows and summary.parts == 12 and summary.complete
    assert summary.per_class == read_summary(str(output))["per_class"] and sum(summary.per_class.values()) == 18
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in output.glob("part-*.parquet")}
    assert set(after) == set(parts) and {n: after[n] for n in parts if n != lost} == {
        n: v for n, v in parts.items() if n != lost
    }
    paths = read_output(str(output)).column("path").to_pylist()
    assert sorted(paths) == expected and len(paths) == len(set(paths))


def test_a_resume_lists_an_s3_folder_only_from_after_its_last_finished_part(
    ray_session, untrained_artifact, s3_bucket, tmp_path, monkeypatch
):
    expected = put_photos(s3_bucket, [f"onward/cane/{i:02d}.jpg" for i in range(24)])
    output = tmp_path / "out"
    config = BatchConfig(
        untrained_artifact, f"s3://{s3_bucket}/onward/", str(output), batch_size=4, rows_per_file=4, progress=False
    )
    classify_images(config)
    parts = sorted(output.glob("part-*.parquet"))  # one unit: its shards in order
    assert [pq.read_metadata(p).num_rows for p in parts] == [1, 1, 2, 4, 4, 4, 4, 4]
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts[:6]}
    for lost in parts[6:]:  # as if the job had been killed after its first 16 photos
        lost.unlink()
    summary, held = resume_watching_listing(config, monkeypatch)
    # Every listing request of the resume starts after the last photo of the last finished part.
    assert held.starts and set(held.starts) == {"onward/cane/15.jpg"}
    assert summary.processed_this_run == 8 and summary.parts_written == 2 and summary.already_done == 16
    assert summary.complete and summary.parts == 8 and summary.files_seen == 24
    assert {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in output.glob("part-*.parquet") if p.name in kept
    } == kept
    paths = read_output(str(output)).column("path").to_pylist()
    assert sorted(paths) == expected and len(paths) == len(set(paths))


def test_a_resume_begins_with_the_folders_it_had_not_started(
    ray_session, untrained_artifact, s3_bucket, tmp_path, monkeypatch
):
    folders = ("cane", "gatto", "mucca", "pecora")
    expected = put_photos(s3_bucket, [f"order/{c}/{i}.jpg" for c in folders for i in range(8)])
    output = tmp_path / "out"
    config = BatchConfig(
        untrained_artifact, f"s3://{s3_bucket}/order/", str(output), batch_size=4, rows_per_file=4, progress=False
    )
    classify_images(config)
    first_paths = {p.name: pq.read_table(p).column("path")[0].as_py() for p in output.glob("part-*.parquet")}
    # As if killed with "cane" and "gatto" halfway (their last, full shard lost) and the others not begun.
    for name, path in first_paths.items():
        folder = path.split("/")[-2]
        if folder in ("mucca", "pecora") or pq.read_metadata(output / name).num_rows == 4:
            (output / name).unlink()
    left = len(list(output.glob("part-*.parquet")))
    # Listing "cane" or "gatto" waits until a new part exists: a resume that took the folders in order
    # would give both listing tasks to them and wait here until the hold gives up.
    held = HeldListing(
        page_size=4,
        hold=lambda prefix, number: (
            ("/cane/" in prefix or "/gatto/" in prefix) and len(list(output.glob("part-*.parquet"))) == left
        ),
    )
    proxy = S3Proxy(os.environ["AWS_ENDPOINT_URL"], before=held)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    config.resume = True
    try:
        summary = classify_images(config)
    finally:
        proxy.close()
    assert not held.timed_out
    assert summary.complete and summary.files_seen == 32 and summary.processed_this_run == 8 + 8 + 4 + 4
    paths = read_output(str(output)).column("path").to_pylist()
    assert sorted(paths) == expected and len(paths) == len(set(paths))


def test_resuming_with_another_part_size_or_other_columns_is_one_sentence(
    ray_session, demo_tree, untrained_artifact, tmp_path
):
    output = str(tmp_path / "out")
    classify_images(BatchConfig(untrained_artifact, str(demo_tree / "gatto"), output, rows_per_file=5, progress=False))
    with pytest.raises(Exception, match="--rows-per-file 5, not 6"):
        classify_images(
            BatchConfig(
                untrained_artifact, str(demo_tree / "gatto"), output, rows_per_file=6, resume=True, progress=False
            )
        )
    # Parts of one output share one schema: a resume that would add the embedding column is refused too.
    with pytest.raises(Exception, match=r"optional columns .* \['unknown'\], not \['unknown', 'embedding'\]"):
        classify_images(
            BatchConfig(
                untrained_artifact, str(demo_tree / "gatto"), output, rows_per_file=5, resume=True, embeddings=True,
                progress=False,
            )
        )  # fmt: skip


# --- Manifests --------------------------------------------------------------------------------


def test_a_manifest_job_classifies_each_uri_once_and_names_rows_it_cannot_use(
    ray_session, untrained_artifact, tmp_path
):
    photos = tmp_path / "photos"
    photos.mkdir()
    good = []
    for i in range(5):
        (photos / f"{i}.jpg").write_bytes(encode(random_photo(i), "JPEG"))
        good.append(str(photos / f"{i}.jpg"))
    rows = good[:3] + ["", "relative/photo.jpg", good[0], str(photos / "gone.jpg")] + good[3:]
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(rows) + "\n")
    output = str(tmp_path / "out")
    summary = classify_images(
        BatchConfig(untrained_artifact, None, output, input_list=str(manifest), rows_per_file=4, progress=False)
    )

    table = read_output(output).to_pylist()
    by_path = {r["path"]: r for r in table}
    assert len(table) == 8 and sorted(by_path) == sorted(set(rows))  # the repeat of good[0] left out
    assert all(by_path[p]["error"] is None and by_path[p]["label"] for p in good)
    assert by_path[""]["error"].startswith("invalid: ") and by_path["relative/photo.jpg"]["error"].startswith(
        "invalid: "
    )
    assert by_path[str(photos / "gone.jpg")]["error"].startswith("missing: ")
    assert (
        summary.duplicates == 1 and summary.classified == 5 and summary.failed_by_kind == {"invalid": 2, "missing": 1}
    )
    assert read_summary(output)["duplicates"] == 1


def test_an_s3_inventory_in_the_bucket_feeds_the_job(ray_session, untrained_artifact, s3_bucket, monkeypatch, capsys):
    import gzip

    monkeypatch.setenv("AWS_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    expected = put_photos(s3_bucket, [f"photos/day {d}/{i}.jpg" for d in (1, 2) for i in range(3)])
    keys = [storage.split_s3(u)[1] for u in expected]
    data = gzip.compress("".join(f'"{s3_bucket}","{k.replace(" ", "+")}","100"\n' for k in keys).encode())
    storage.write_bytes(f"s3://{s3_bucket}/inventory/photos/all/data/1.csv.gz", data)
    manifest = {
        "destinationBucket": f"arn:aws:s3:::{s3_bucket}",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, Size",
        "files": [{"key": "inventory/photos/all/data/1.csv.gz", "size": len(data), "MD5checksum": "x"}],
    }
    storage.write_bytes(
        f"s3://{s3_bucket}/inventory/photos/all/2026-12-01T01-00Z/manifest.json", json.dumps(manifest).encode()
    )
    code = main(["infer", "--model", untrained_artifact, "--input-list", f"s3://{s3_bucket}/inventory/photos/all/2026-12-01T01-00Z/manifest.json",
                 "--output", f"s3://{s3_bucket}/predictions", "--no-progress"])  # fmt: skip
    assert code == 0 and "Predictions written to" in capsys.readouterr().out
    assert sorted(read_output(f"s3://{s3_bucket}/predictions").column("path").to_pylist()) == expected


def test_a_manifest_that_is_not_one_is_one_sentence(capsys, untrained_artifact, tmp_path):
    (tmp_path / "list.xlsx").write_bytes(b"PK\x03\x04\x00\x00binary spreadsheet")
    code, message = run_cli(
        capsys,
        "--model",
        untrained_artifact,
        "--input-list",
        str(tmp_path / "list.xlsx"),
        "--output",
        str(tmp_path / "out"),
    )
    assert_one_sentence(code, message, "list.xlsx", "neither text, CSV nor Parquet")
    (tmp_path / "list.csv").write_text("name,size\ncat.jpg,1\n")
    code, message = run_cli(
        capsys,
        "--model",
        untrained_artifact,
        "--input-list",
        str(tmp_path / "list.csv"),
        "--output",
        str(tmp_path / "out"),
    )
    assert_one_sentence(code, message, "list.csv", "no path column")


def test_concurrency_takes_one_number_or_a_range(capsys, untrained_artifact, photo_dir, tmp_path):
    for values in (["3", "1"], ["1", "2", "3"]):
        code, message = run_cli(
            capsys,
            "--model",
            untrained_artifact,
            "--input",
            str(photo_dir),
            "--output",
            str(tmp_path / "out"),
            "--concurrency",
            *values,
        )
        assert_one_sentence(code, message, "--concurrency")
