import json

import numpy as np
import pytest

import speechtl
from speechtl.cli.transcribe import main as transcribe_main
from speechtl.wer import get_normalizer


def test_order_is_kept_and_padding_does_not_change_results():
    b = speechtl.create_backbone("wav2vec2-tiny-random")
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype("float32") for n in (8000, 16000, 4000, 12000)]
    batched = speechtl.transcribe(b, waves, batch_size=3)
    alone = [speechtl.transcribe(b, w)[0] for w in waves]
    assert batched == alone


def test_cli_prints_path_tab_text_and_json(sine_wav, capsys):
    path = sine_wav(0.5)
    assert transcribe_main(["wav2vec2-tiny-random", str(path), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split("\t")[0] == str(path)
    assert transcribe_main(["wav2vec2-tiny-random", str(path), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(path)


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty", "folder", "unknown-model"])
def test_cli_bad_input_exits_2_with_one_line(case, tmp_path, capsys):
    model, target = "wav2vec2-tiny-random", tmp_path / "x.wav"
    if case == "corrupt":
        target.write_bytes(b"not audio at all")
    elif case == "empty":
        target.write_bytes(b"")
    elif case == "folder":
        target = tmp_path
    elif case == "unknown-model":
        model = "wav2vec3-tiny"
    assert transcribe_main([model, str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]


@pytest.mark.slow
def test_whisper_tiny_en_wer_on_real_speech(shared_data):
    """whisper-tiny.en on the 48 VCTK + LJSpeech clips: measured 2.6 % WER (Whisper normaliser)."""
    import jiwer

    rows = [json.loads(line) for line in (shared_data / "real" / "manifest.jsonl").read_text().splitlines()]
    paths = [shared_data / "real" / r["audio"] for r in rows]
    hyps = speechtl.transcribe("whisper-tiny.en", paths, batch_size=8, progress=False)
    norm = get_normalizer("whisper")
    wer = jiwer.wer([norm(r["text"]) for r in rows], [norm(h) for h in hyps])
    assert wer < 0.035, wer
