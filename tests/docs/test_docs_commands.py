"""Every shell command the README and docs/ show is checked against the code as written:
the script exists, each ``--flag`` is one its parser knows, config files exist, yacs
``KEY VALUE`` overrides name existing keys, LazyConfig ``a.b=c`` overrides name existing
nodes, and ``make`` targets and variables exist. Placeholders (``...``, ``$VAR``, ``~/``,
``HOST``) are skipped. The built-in-data commands are run by the tests that train
(test_end_to_end, test_lazy, test_tools, test_ablation)."""
import functools
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YACS_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
LAZY_OVERRIDE = re.compile(r"^([a-z_][\w]*(?:\.[\w]+)+)=")


def _is_placeholder(token):
    return any(p in token for p in ("...", "$", "~", "HOST", "<", "CONFIG"))


def documented_commands():
    """(file, command) for each command line in a shell code block (continuations joined)."""
    out = []
    for path in ["README.md"] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        text = open(os.path.join(ROOT, path)).read()
        for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
            if lang not in ("", "bash", "sh", "shell"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith((".venv/bin/python ", "make ")):
                    out.append((os.path.relpath(os.path.join(ROOT, path), ROOT), line))
    return out


COMMANDS = documented_commands()


@functools.lru_cache(maxsize=None)
def help_text(script):
    out = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, f"{script} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


@functools.lru_cache(maxsize=None)
def yacs_keys(config_file):
    from libra_d2.config import get_libra_cfg

    cfg = get_libra_cfg(os.path.join(ROOT, config_file))
    return cfg


def _has_yacs_key(cfg, key):
    from libra_d2.config import has_key

    return has_key(cfg, key)


def _has_lazy_node(config_file, dotted):
    from detectron2.config import LazyConfig

    node = LazyConfig.load(os.path.join(ROOT, config_file))
    parts = dotted.split(".")
    for part in parts[:-1]:
        if part not in node:
            return False
        node = node[part]
    return parts[-1] in node


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{f}:{c[:60]}" for f, c in COMMANDS])
def test_documented_command_matches_the_code(doc, command):
    tokens = shlex.split(command)
    if tokens[0] == "make":
        makefile = open(os.path.join(ROOT, "Makefile")).read()
        for t in tokens[1:]:
            if "=" in t:
                var = t.split("=")[0]
                assert re.search(rf"\$\({var}\)|^{var}\s*\?=|^export .*\b{var}\b", makefile, re.M), f"{doc}: Makefile has no {var}"
            else:
                assert re.search(rf"^{re.escape(t)}:", makefile, re.M), f"{doc}: Makefile has no target {t}"
        return
    script = tokens[1]
    assert os.path.isfile(os.path.join(ROOT, script)), f"{doc}: {script} does not exist"
    usage = help_text(script)
    args = tokens[2:]
    if "--" in args:  # everything after a bare -- is passed on as config overrides
        args, passed_on = args[: args.index("--")], args[args.index("--") + 1:]
    else:
        passed_on = []
    config_file = None
    for i, t in enumerate(args):
        if re.match(r"^--?[A-Za-z][\w-]*(=\S*)?$", t):
            flag = t.split("=")[0]
            assert re.search(rf"(^|[\s\[,]){re.escape(flag)}\b", usage), f"{doc}: {script} has no option {flag}"
            if flag in ("--config-file", "--base") and i + 1 < len(args) and not _is_placeholder(args[i + 1]):
                config_file = args[i + 1]
        elif t.startswith("configs/") or re.search(r"=configs/", t):
            path = t.split("=", 1)[-1] if not t.startswith("configs/") else t
            assert os.path.isfile(os.path.join(ROOT, path)), f"{doc}: {path} does not exist"
    if config_file is None or not os.path.isfile(os.path.join(ROOT, config_file)):
        return  # a placeholder, or a file the documented steps create first (checked by its own test)
    for t in args + passed_on:
        if config_file.endswith(".yaml") and YACS_KEY.match(t):
            assert _has_yacs_key(yacs_keys(config_file), t), f"{doc}: {config_file} has no key {t}"
        m = LAZY_OVERRIDE.match(t)
        if config_file.endswith(".py") and m:
            assert _has_lazy_node(config_file, m.group(1)), f"{doc}: {config_file} has no node {m.group(1)}"
