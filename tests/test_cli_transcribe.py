"""speechtl-transcribe --adapter DIR: the command line transcribes as the Python API does with that adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import speechtl
from speechtl.adapters import load_adapter
from speechtl.backbones import create_backbone
from speechtl.cli.transcribe import main as transcribe_main
from speechtl.transfer import adapt

MODEL = "wav2vec2-tiny-random"


@pytest.mark.parametrize("method", ["lora", "bottleneck"])  # merged for inference, and kept as added modules
def test_transcribe_cli_with_an_adapter_equals_the_python_api(tmp_path, capsys, method):
    torch.manual_seed(0)
    model = adapt(create_backbone(MODEL), method)
    with torch.no_grad():  # a non-zero adapter (zero-initialised ones change nothing)
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    folder = model.save_adapter(tmp_path / method)
    rng = np.random.default_rng(0)
    files = []
    for i, n in enumerate((8000, 12000, 5000)):
        files.append(tmp_path / f"c{i}.wav")
        sf.write(files[-1], (0.1 * rng.standard_normal(n)).astype(np.float32), 16000)

    assert transcribe_main([MODEL, *map(str, files), "--adapter", str(folder), "--json", "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(f) for f in files]
    reloaded = load_adapter(create_backbone(MODEL), folder)
    expected = speechtl.transcribe(reloaded, files, progress=False)
    assert [r["text"] for r in rows] == expected == speechtl.transcribe(model, files, progress=False)
    base = speechtl.transcribe(create_backbone(MODEL), files, progress=False)
    assert all(a != b for a, b in zip(expected, base))  # the adapter was applied, to every file
    assert transcribe_main([MODEL, *map(str, files), "--json", "--no-progress"]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == base
    # A CTC model decodes once greedily: --no-fallback is what it does anyway; a threshold it would ignore is an error.
    assert transcribe_main([MODEL, str(files[0]), "--no-fallback", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == base[0]
    assert transcribe_main([MODEL, str(files[0]), "--logprob-threshold", "-2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "logprob_threshold: Whisper's fallback settings do not apply to a CTC model" in err, err
