"""Pretrained weights are checked on the driver before Ray starts, and a trial on a node that
still lacks them names the node (issue: missing weights were found only inside the trials).

torch hub's cache is pointed at an empty tmp folder (TORCH_HOME): nothing is downloaded.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import ray

from trainables.errors import ConfigError
from trainables.models import missing_weights, require_weights
from tuner.cli import main
from tuner.cli.overrides import parse_sets
from tuner.running.api import resolve_space
from tuner.running.settings import possible_values
from tuner.running.trial import run_trial

RESNET18 = "resnet18-f37072fd.pth"
MOBILENET = "mobilenet_v3_small-047dcff4.pth"
TRANSFER = ["--space", "transfer", "--dataset", "digits", "--num-samples", "2",
            "--max-epochs", "1"]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; returns its checkpoints folder (not created)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _transfer_missing(*sets: str) -> list[str]:
    """What the driver's check finds for the transfer space (as tune() composes it)."""
    space = resolve_space("transfer", max_epochs=1,
                          fixed={**parse_sets(list(sets)), "dataset": "digits"})
    download = all(possible_values(space, "download"))
    return [f for m in sorted(possible_values(space, "model"))
            for p in sorted(possible_values(space, "pretrained"))
            for f in missing_weights(m, p, download)]


def test_run_refuses_missing_weights_before_ray(hub: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    storage = tmp_path / "results"
    was_up = ray.is_initialized()
    assert main(["run", *TRANSFER, "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(hub / RESNET18) in lines[0] and str(hub / MOBILENET) in lines[0]
    assert "knob 'pretrained'" in lines[0] and "--set download=true" in lines[0]
    assert ray.is_initialized() == was_up
    assert not storage.exists()


def test_download_true_passes_the_check(hub: Path) -> None:
    assert len(_transfer_missing()) == 2
    assert _transfer_missing("download=true") == []
    assert not hub.exists()  # checking fetched nothing


def test_weights_in_the_cache_pass_the_check(hub: Path) -> None:
    hub.mkdir(parents=True)
    (hub / RESNET18).write_bytes(b"")
    assert _transfer_missing() == [str(hub / MOBILENET)]
    (hub / MOBILENET).write_bytes(b"")
    assert _transfer_missing() == []
    require_weights(["resnet18", "mobilenet_v3_small"], ["IMAGENET1K_V1"], download=False)


def test_missing_checkpoint_path_is_refused_naming_it(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    gone = tmp_path / "gone" / "checkpoint.pt"
    storage = tmp_path / "results"
    assert main(["run", *TRANSFER, "--storage", str(storage),
                 "--set", f"pretrained={gone}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(gone) in err, err
    assert not storage.exists()
    assert missing_weights("resnet18", str(gone)) == [str(gone)]
    with pytest.raises(ConfigError, match="no checkpoint file at .*gone"):
        require_weights(["resnet18"], [str(gone), "none"], download=True)


def test_pairs_the_recipe_refuses_need_no_file(hub: Path) -> None:
    """model x pretrained is a cross product: pairs a space never draws are not required."""
    assert missing_weights("simple_cnn", "IMAGENET1K_V1") == []
    assert missing_weights("resnet18", "IMAGENET1K_V2") == []  # resnet18 has no V2
    assert missing_weights("resnet18", "none") == []
    assert missing_weights("resnet18", "DEFAULT") == [str(hub / RESNET18)]


def test_trial_missing_weights_names_its_node(hub: Path, tmp_path: Path) -> None:
    """The worker side of the check, without Ray: run_trial refuses before building anything."""
    config = {"dataset": "digits", "model": "resnet18", "pretrained": "IMAGENET1K_V1",
              "freeze": "backbone", "epochs": 1, "width": None}
    with pytest.raises(ConfigError) as err:
        run_trial(config)
    message = str(err.value)
    assert f"on node {socket.gethostname()}" in message and str(hub / RESNET18) in message
    gone = tmp_path / "gone.pt"
    with pytest.raises(ConfigError, match=f"no checkpoint file on node .* at {gone}"):
        run_trial({**config, "pretrained": str(gone)})
