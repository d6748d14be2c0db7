"""Security: secrets never reach the outputs or the console; no shell, no code from strings; weights
load only through safetensors or `torch.load(weights_only=True)`.

That a malicious `pytorch_model.bin` is refused without running its payload is tested in
tests/test_hf.py::test_malicious_pickle_is_refused; here the source is scanned so that no other
loader can bypass it.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, TINY

SOURCES = sorted([*(REPO / "src").rglob("*.py"), *(REPO / "pipelines").glob("*.py")])

# ---------------------------------------------------------------------------- secrets

FAKE_WANDB_KEY = "0123456789abcdef" * 2 + "deadbeef"  # 40 hex characters, as a real key
FAKE_HF_TOKEN = "hf_" + "SecretsNeverLeak" * 2 + "x0Q7"  # the shape of a user access token
VIZ = [  # a small visualize stage; attention figures kept
    "visualize.n_iter=250", "visualize.early_exaggeration_iter=100", "visualize.snapshots=[]",
    "visualize.compare_dof=[]", "visualize.compare_methods=false", "visualize.perplexity=10",
    "visualize.n_jobs=1", "extract.words=[said]",
]  # fmt: skip


def files_containing(needle: bytes, root: Path) -> list[Path]:
    """Every regular file under `root` whose raw bytes contain `needle` (binary files too: the
    W&B `.wandb` log stores strings as plain UTF-8 inside protobuf records)."""
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes()
    ]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_secrets_in_the_environment_never_reach_outputs_or_console(tmp_path):
    """The whole default pipeline (TINY) with a W&B key and an HF token in the environment:
    neither appears in any artifact, W&B offline run file, Hydra job file or the console."""
    outputs, job_dir, home = tmp_path / "outputs", tmp_path / "job", tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        HOME=str(home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_API_KEY=FAKE_WANDB_KEY,
        HF_TOKEN=FAKE_HF_TOKEN,
        HUGGING_FACE_HUB_TOKEN=FAKE_HF_TOKEN,
        WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}",  # in case anything went online
    )
    result = subprocess.run(
        [
            sys.executable, str(REPO / "pipelines" / "run.py"), *TINY, *VIZ, "logger=wandb",
            "run_name=secrets-check", f"paths.outputs={outputs}", f"hydra.run.dir={job_dir}",
        ],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    # the scan reaches what it must: every stage, the W&B run logs, the Hydra job files
    for stage in ("tokenizer", "pretrain", "finetune", "extract", "visualize"):
        assert list((outputs / "artifacts" / stage).glob("*/manifest.json")), stage
    wandb_logs = list((outputs / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_logs) >= 4
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "pipeline.json"):
        assert (job_dir / name).is_file(), name
    # ... and would see a string there: the run name is in each W&B log (the group) and job file
    assert set(wandb_logs) <= set(files_containing(b"secrets-check", outputs / "wandb"))
    assert job_dir / ".hydra" / "overrides.yaml" in files_containing(b"secrets-check", job_dir)

    for secret in (FAKE_WANDB_KEY, FAKE_HF_TOKEN):
        for root in (outputs, job_dir, home):
            assert not files_containing(secret.encode(), root), (secret, root)
        assert secret not in result.stdout and secret not in result.stderr


# Config keys are typed dataclasses (src/bertforge/config.py) with no field for a key, token or
# password: a secret cannot be passed as an override, so no override case is tested here.


# --------------------------------------------------------------- shell and dynamic code

SHELL_FUNCTIONS = {
    "os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell",
}  # fmt: skip
PROCESS_FUNCTIONS = {
    "subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
    "subprocess.Popen", "asyncio.create_subprocess_exec",
}  # fmt: skip
DYNAMIC_CODE = {"eval", "exec", "builtins.eval", "builtins.exec"}

# -------------------------------------------------------------------- unsafe loading

PICKLE_LOADERS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
    "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pandas.read_pickle",
    "shelve.open", "marshal.load", "marshal.loads",
}  # fmt: skip
TORCH_LOADERS = {"torch.load", "torch.serialization.load"}


class Scan(ast.NodeVisitor):
    """Calls in one module, with import aliases resolved (`import subprocess as sp`,
    `from os import system`), checked against the rules above."""

    def __init__(self, source: str, name: str) -> None:
        self.name = name
        self.tree = ast.parse(source)
        self.aliases: dict[str, str] = {}
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    self.aliases[local] = alias.name if alias.asname else local
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        self.violations: list[str] = []
        self.kinds: list[str] = []  # "shell" (processes, dynamic code) or "load" (weights)
        self.torch_loads = 0
        self.visit(self.tree)

    def qualname(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def flag(self, node: ast.AST, message: str, kind: str = "shell") -> None:
        self.violations.append(f"{self.name}:{node.lineno}: {message}")
        self.kinds.append(kind)

    def of_kind(self, kind: str) -> list[str]:
        return [v for v, k in zip(self.violations, self.kinds, strict=True) if k == kind]

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualname(node.func) or ""
        keywords = {k.arg: k.value for k in node.keywords}
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            self.flag(node, f"{name or 'a call'} passes shell={ast.unparse(shell)}")
        if name in SHELL_FUNCTIONS:
            self.flag(node, f"{name} runs a shell command line")
        if name in DYNAMIC_CODE:
            self.flag(node, f"{name}() runs code from a string")
        if name in PROCESS_FUNCTIONS:
            self.check_argv(node, name, keywords)
        if name in PICKLE_LOADERS or name.startswith("dill."):
            self.flag(node, f"{name} unpickles arbitrary objects", "load")
        if name == "numpy.load":
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                self.flag(node, f"{name} with allow_pickle={ast.unparse(allow)}", "load")
        if name in TORCH_LOADERS:
            self.torch_loads += 1
            only = keywords.get("weights_only")
            if not (isinstance(only, ast.Constant) and only.value is True):
                self.flag(node, f"{name} without weights_only=True", "load")
        self.generic_visit(node)

    def check_argv(self, node: ast.Call, name: str, keywords: dict) -> None:
        if None in keywords:
            self.flag(node, f"{name}(**...) cannot be checked for shell=")
        argv = node.args[0] if node.args else keywords.get("args")
        if name == "asyncio.create_subprocess_exec":
            return  # its program and arguments are separate positional arguments
        if isinstance(argv, ast.Name):
            bound = self.assignments(node, argv.id)
            if not bound:
                self.flag(node, f"{name}({argv.id}): {argv.id} is not bound to a list here")
            for value in bound:
                self.check_argv_list(node, name, value)
        else:
            self.check_argv_list(node, name, argv)

    def check_argv_list(self, node: ast.Call, name: str, argv: ast.AST | None) -> None:
        """A list or tuple display whose program is a literal or `sys.executable`, so neither
        a command line nor the program comes from config."""
        if not isinstance(argv, (ast.List, ast.Tuple)):
            shown = ast.unparse(argv) if argv is not None else "nothing"
            self.flag(node, f"{name} gets {shown}, not a list of arguments")
            return
        program = argv.elts[0] if argv.elts else None
        literal = isinstance(program, ast.Constant) and isinstance(program.value, str)
        if not (literal or (program is not None and self.qualname(program) == "sys.executable")):
            shown = ast.unparse(program) if program is not None else "nothing"
            self.flag(node, f"{name} runs {shown}, not a literal program or sys.executable")

    def assignments(self, node: ast.AST, variable: str) -> list[ast.AST]:
        scope = node
        while scope in self.parents and not isinstance(
            scope, (ast.FunctionDef, ast.AsyncFunctionDef)
        ):
            scope = self.parents[scope]
        values = []
        for child in ast.walk(scope):
            targets = child.targets if isinstance(child, ast.Assign) else []
            if isinstance(child, (ast.AnnAssign, ast.AugAssign)):
                targets = [child.target]
            if getattr(child, "value", None) is not None and any(
                isinstance(t, ast.Name) and t.id == variable for t in targets
            ):
                extends = isinstance(child.value, (ast.List, ast.Tuple))
                if isinstance(child, ast.AugAssign) and extends:
                    continue  # `cmd += [...]` keeps a list a list
                values.append(child.value)  # an AugAssign of anything else is flagged
        return values


def scan(text: str, name: str = "<snippet>") -> Scan:
    return Scan(textwrap.dedent(text), name)


def scan_sources() -> list[Scan]:
    return [scan(path.read_text(), str(path.relative_to(REPO))) for path in SOURCES]


BAD_SNIPPETS = {
    "import subprocess\nsubprocess.run(['ls'], shell=True)": "shell=True",
    "import subprocess as sp\nsp.check_output('ls -l', shell=flag)": "shell=flag",
    "from subprocess import Popen\nPopen('git status')": "not a list of arguments",
    "import subprocess\ncmd = 'git ' + ref\nsubprocess.run(cmd)": "not a list of arguments",
    "import subprocess\ndef f(cmd):\n    subprocess.call(cmd)": "not bound to a list",
    "import subprocess\nsubprocess.run([cfg.program, 'x'])": "not a literal program",
    "import subprocess\nsubprocess.run(**options)": "cannot be checked",
    "import os\nos.system('rm -rf x')": "os.system",
    "from os import popen\npopen('ls')": "os.popen",
    "import subprocess\nsubprocess.getoutput('ls')": "subprocess.getoutput",
    "eval(expression)": "eval() runs code",
    "exec(compile(src, 'f', 'exec'))": "exec() runs code",
    "import torch\ntorch.load(path)": "without weights_only=True",
    "import torch\ntorch.load(path, weights_only=False)": "without weights_only=True",
    "from torch import load\nload(path, map_location='cpu')": "torch.load without",
    "import pickle\npickle.loads(blob)": "pickle.loads unpickles",
    "import dill\ndill.load(f)": "dill.load unpickles",
    "import joblib\njoblib.load(path)": "joblib.load unpickles",
    "import numpy as np\nnp.load(path, allow_pickle=True)": "allow_pickle=True",
}
GOOD_SNIPPET = """
    import subprocess, sys, torch
    import numpy as np
    from safetensors.torch import load_file

    def f(model, path):
        model.eval()  # a method, not the builtin
        subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, shell=False)
        cmd = [sys.executable, "-m", "pytest"]
        cmd += ["-q"]
        subprocess.check_call(cmd)
        np.load(path, mmap_mode="r")
        load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
"""


@pytest.mark.parametrize("snippet", list(BAD_SNIPPETS))
def test_scanner_flags_each_unsafe_pattern(snippet):
    violations = scan(snippet).violations
    assert len(violations) >= 1 and BAD_SNIPPETS[snippet] in violations[0], violations


def test_scanner_accepts_safe_patterns():
    assert scan(GOOD_SNIPPET).violations == []


def test_no_shell_no_dynamic_code_no_command_from_config():
    """src/ and pipelines/: no shell=True, os.system/popen, subprocess.getoutput, eval/exec;
    every subprocess call gets an argument list whose program is a literal or sys.executable."""
    assert any(path.name == "cli.py" for path in SOURCES) and len(SOURCES) > 20
    assert [v for s in scan_sources() for v in s.of_kind("shell")] == []


def test_weights_load_only_through_safetensors_or_weights_only_torch_load():
    """Every torch.load passes weights_only=True; no pickle/dill/joblib/pandas loader, no
    numpy.load(allow_pickle=True)."""
    scans = scan_sources()
    assert sum(s.torch_loads for s in scans) >= 1  # hf.py's pytorch_model.bin reader at least
    assert [v for s in scans for v in s.of_kind("load")] == []
