"""Every command's --help shows every option's default, and the train options come from TrainConfig."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from s2sd_deploy.training.config import DATASET_PRESETS, TrainConfig, default_text, flag

S2SD = str(Path(sys.executable).with_name("s2sd"))


def help_text(*command: str) -> str:
    result = subprocess.run(
        [S2SD, *command, "--help"], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "240"}
    )
    assert result.returncode == 0, result.stderr
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stdout).split())


def test_train_help_has_every_option_with_its_default():
    text = help_text("train")
    for f in dataclasses.fields(TrainConfig):
        assert flag(f.name) in text, f.name
        assert f"[default: ({default_text(f)})]" in text, f.name
    assert (
        "[default: (1e-05; glyphs 0.001; digits 0.0001)]" in text
    )  # the dataclass and the preset, not a hand-written copy
    assert set(DATASET_PRESETS["digits"]) <= {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    "command,options",
    [
        (("export",), ["--engine", "--checkpoint", "--opset", "--batch-max", "--precision", "--verify-limit", "--out"]),
        (("embed",), ["--batch-size", "--workers", "--threads", "--provider", "--shard"]),
        (("bench-latency",), ["--gallery-sizes", "--query-batch", "--index", "--out", "--max-seconds", "--run"]),
    ],
)
def test_other_commands_show_their_defaults(command, options):
    result = subprocess.run(
        [S2SD, *command, "--help"], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"}
    )
    lines = {}
    for line in result.stdout.splitlines():
        words = line.replace("*", " ").split()
        if len(words) > 2 and words[1].startswith("--"):
            lines[words[1]] = line
    for option in options:
        assert "[default:" in lines[option], lines.get(option)


@pytest.mark.parametrize("command", ["train", "export", "report", "embed", "eval", "bench-latency"])
def test_examples_are_current_and_outputs_are_replaced_only_with_force(command):
    """The bundled default is glyphs (~2 minutes on 2 cores): no example still names the digits run or "~1 minute";
    every command that replaces its own output offers --force."""
    text = help_text(command)
    assert "runs/digits" not in text and "1 minute" not in text and "S2SD on the bundled digits" not in text
    assert ("--force" in text) == (command != "train")
