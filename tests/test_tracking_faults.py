"""W&B faults cost neither the run nor its CSV metrics.

`logger.mode=online` without an API key, and with a key but the service unreachable (a closed
port; a server that accepts connections and never answers), each end with exit 0, one warning,
offline W&B runs under `<outputs>/wandb` and every CSV row, within about `logger.init_timeout`.
The entry points run in subprocesses with their own HOME and no WANDB_* variables (conftest's
WANDB_MODE=offline would hide the online attempt), so the user's ~/.netrc is never read.

Measured on the project's 2-core CPU machine, `pipelines/tokenizer.py` on TINY settings, wall
time of the whole process, two runs each (logger=csv: 6.4-6.5 s; logger=wandb offline: 7.8-8.1 s):
- no API key: 7.9-8.1 s (no network attempt: the offline run only);
- closed port: 9.9-10.0 s at init_timeout=2, 12.8-13.1 s at init_timeout=5 (wandb retries the
  refused connection until its deadline), so the fallback costs init_timeout + ~0.2 s;
- a server that accepts connections and never answers: 9.9-10.1 s at init_timeout=2 and 13.1 s
  at 5; 32.5 s at 2 before tracking.py's fix (wandb's report of the failed init flushed at exit
  with 10 s HTTP timeouts);
- pretrain.py (tokenizer + pretrain stages), closed port, init_timeout=2: 21.9 s with one wait
  and one warning per stage before the fix, 18.7 s after (logger=csv: 17.6 s).
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertforge.pipeline.store import MANIFEST
from conftest import REPO, TINY
from wandb_offline import read_offline_run

FAKE_KEY = "0123456789abcdef" * 2 + "deadbeef"  # 40 hex characters, the shape of a W&B key
INIT_TIMEOUT = 2  # seconds; an unreachable service fails the same way with any timeout


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test environment without any WANDB_* variable and with an empty HOME (no ~/.netrc,
    no wandb settings), plus `extra`."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.pop("XDG_CONFIG_HOME", None)
    env.update(
        HOME=str(home),
        NETRC=str(home / ".netrc"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        **extra,
    )
    return env


def run(script: str, *overrides: str, env: dict[str, str], timeout: float = 300):
    """Run `pipelines/<script>`; returns the CompletedProcess and its wall time in seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / script), *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )
    return result, time.perf_counter() - started


def wandb_warnings(stderr: str) -> list[str]:
    """stderr lines that warn about W&B (ours, wandb's own `wandb: WARNING ...`, Lightning's)."""
    return [
        line
        for line in stderr.splitlines()
        if re.search("warn", line, re.I) and re.search("W&B|wandb", line, re.I)
    ]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest(outputs: Path, stage: str) -> tuple[Path, dict]:
    (path,) = (outputs / "artifacts" / stage).glob(f"*/{MANIFEST}")
    return path.parent, json.loads(path.read_text())


def assert_offline_runs(outputs: Path, stages: list[str]) -> None:
    """Each stage's manifest names one offline W&B run under `<outputs>/wandb` with its metrics."""
    for stage in stages:
        _, content = manifest(outputs, stage)
        (run,) = content["wandb_runs"]
        run_dir = Path(run)  # the offline-run-* directory, which `wandb sync` takes
        assert run_dir.parent == outputs / "wandb" and run_dir.name.startswith("offline-run-")
        logged = {key for row in read_offline_run(run_dir)["history"] for key in row}
        expected = "train/loss_mlm" if stage == "pretrain" else f"{stage}/vocab_size"
        assert expected in logged, (stage, sorted(logged))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_tokenizer_csv_complete(outputs: Path) -> None:
    path, content = manifest(outputs, "tokenizer")
    (row,) = read_csv(path / "logs" / "metrics.csv")
    assert float(row["tokenizer/vocab_size"]) == content["metrics"]["vocab_size"] == 800


def assert_pretrain_csv_complete(outputs: Path) -> None:
    """TINY: 6 steps, a train row every 2 steps, validation every 3 steps (and at the end)."""
    path, content = manifest(outputs, "pretrain")
    rows = read_csv(path / "logs" / "metrics.csv")
    train_steps = {int(r["step"]) for r in rows if r.get("train/loss")}
    val_rows = [r for r in rows if r.get("val/loss_mlm")]
    assert len(train_steps) == 6 // 2, rows
    assert len({int(r["step"]) for r in val_rows}) >= 6 // 3, rows
    assert float(val_rows[-1]["val/loss_mlm"]) == pytest.approx(content["metrics"]["val_loss_mlm"])
    assert content["metrics"]["steps"] == 6
    assert_tokenizer_csv_complete(outputs)


def assert_key_nowhere(key: str, *roots: Path, texts: tuple[str, ...] = ()) -> None:
    needle = key.encode()
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert needle not in path.read_bytes(), path
    for text in texts:
        assert key not in text


def test_online_without_api_key_logs_offline_with_one_warning(tmp_path):
    outputs = tmp_path / "outputs"
    result, _ = run(
        "pretrain.py", *TINY, "logger=wandb", "logger.mode=online", f"paths.outputs={outputs}",
        env=isolated_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warned = wandb_warnings(result.stderr)
    assert len(warned) == 1 and "no W&B API key" in warned[0], warned  # not once per stage
    assert "logging offline instead" in warned[0]
    assert_offline_runs(outputs, ["tokenizer", "pretrain"])
    assert not list((outputs / "wandb").glob("run-*")), "no online run was attempted"
    assert_pretrain_csv_complete(outputs)


def test_unreachable_service_logs_offline_with_one_warning_and_no_key_on_disk(tmp_path):
    """A closed port: one online attempt for the whole process (the first stage), then offline."""
    outputs = tmp_path / "outputs"
    env = isolated_env(
        tmp_path, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}"
    )
    result, _ = run(
        "pretrain.py", *TINY, "logger=wandb", "logger.mode=online",
        f"logger.init_timeout={INIT_TIMEOUT}", f"paths.outputs={outputs}", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warned = wandb_warnings(result.stderr)
    assert len(warned) == 1, warned
    assert re.search(r"W&B unreachable \(.+\); logging offline instead", warned[0]), warned
    assert len(list((outputs / "wandb").glob("run-*"))) == 1  # the failed attempt's logs
    assert_offline_runs(outputs, ["tokenizer", "pretrain"])
    assert_pretrain_csv_complete(outputs)
    assert_key_nowhere(FAKE_KEY, outputs, tmp_path / "home", texts=(result.stdout, result.stderr))


def test_silent_service_costs_about_init_timeout(tmp_path):
    """A server that accepts connections and never answers: the fallback must not wait longer
    than `logger.init_timeout` plus the offline run's own cost (it took +26 s at a 2 s timeout
    before tracking.py kept wandb's exit-time error report from waiting on that server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # the kernel completes the handshakes; nothing ever reads or answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    tokenizer_only = ["corpus.max_documents=120", "tokenizer.vocab_size=800"]
    try:
        baseline, csv_seconds = run(
            "tokenizer.py", *tokenizer_only, "logger=csv",
            f"paths.outputs={tmp_path / 'csv'}", env=isolated_env(tmp_path),
        )  # fmt: skip
        assert baseline.returncode == 0, baseline.stderr[-3000:]
        outputs = tmp_path / "outputs"
        result, seconds = run(
            "tokenizer.py", *tokenizer_only, "logger=wandb", "logger.mode=online",
            f"logger.init_timeout={INIT_TIMEOUT}", f"paths.outputs={outputs}",
            env=isolated_env(tmp_path, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=url),
        )  # fmt: skip
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr[-3000:]
    warned = wandb_warnings(result.stderr)
    assert len(warned) == 1 and "W&B unreachable" in warned[0], warned
    assert_offline_runs(outputs, ["tokenizer"])
    assert_tokenizer_csv_complete(outputs)
    # measured: +3.6 s (10.0 s vs 6.4 s); the margin absorbs a loaded 2-core machine
    assert seconds - csv_seconds < INIT_TIMEOUT + 10, (seconds, csv_seconds)
    assert_key_nowhere(FAKE_KEY, outputs, tmp_path / "home", texts=(result.stdout, result.stderr))
