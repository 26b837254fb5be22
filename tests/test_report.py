"""report.html's page in a real browser (Debian's headless Chromium), without a training run: utterances of known
WER with real clips, and a recording's timeline. The end-to-end runs check the same on their own reports
(test_train.py, test_classification.py, test_diarization.py)."""

import numpy as np
import pytest
import soundfile as sf

from support.browser import check_report
from speechkit.report import asr_sections, page, timeline

REFERENCES = ["the cat sat", "a red ball", "go home now", "we need our doctor"]
HYPOTHESES = ["the cat sat", "a bed ball", "go home now", "we need a doctor today"]


def write_clips(folder, seconds):
    (folder / "clips").mkdir(parents=True)
    rate = 16000
    for k, s in enumerate(seconds):
        t = np.arange(int(s * rate)) / rate
        sf.write(folder / "clips" / f"{k:05d}.flac", 0.2 * np.sin(2 * np.pi * (200 + 50 * k) * t), rate,
                 format="FLAC", subtype="PCM_16")
    return {k: f"clips/{k:05d}.flac" for k in range(len(seconds))}


def test_the_utterances_play_sort_by_wer_and_filter_to_the_errors(tmp_path):
    run = tmp_path / "run"
    seconds = [1.0, 1.5, 0.8, 2.2]
    audio = write_clips(run, seconds)
    del audio[2]  # a clip past the cap: no player, a note instead
    sections = asr_sections(REFERENCES, HYPOTHESES, np.array(seconds), [f"clip{k}.wav" for k in range(4)], "greedy",
                            audio, "3 of 4 utterances playable")
    (run / "report.html").write_text(page("demo/test", sections))

    seen = check_report(run, tmp_path / "check", also="""(function () {
      var bar = document.getElementById('utterances');
      bar.querySelector('.by-score').click();
      var ids = Array.prototype.map.call(document.querySelectorAll('table.rows tr[data-sort]'),
                                         function (r) { return r.cells[0].textContent.split('.wav')[0]; });
      bar.querySelector('.only-errors').click();
      return {ids: ids, counter: bar.querySelector('.shown').textContent};
    })()""")
    assert seen["players"] == 3 and abs(seen["played"]["duration"] - 1.0) < 0.05  # clip0.wav's second of tone
    table = seen["tables"][0]
    assert table["rows"] == 4 and table["errors"] == 2 and table["filtered"] == 2
    assert table["sorted"] == pytest.approx([0.5, 1 / 3, 0.0, 0.0], abs=1e-5)
    assert seen["also"]["ids"][:2] == ["clip3", "clip1"]  # WER 0.5, then 1/3
    assert seen["also"]["counter"] == "2 of 4 shown"
    assert "curves.png" not in seen["links"]  # no training curves beside this page: no link to them


def test_a_recording_timeline_plays_from_the_turn_clicked(tmp_path):
    run = tmp_path / "run"
    audio = write_clips(run, [6.0])
    reference = [(0.5, 2.0, "A"), (2.5, 5.0, "B")]
    hypothesis = [(0.6, 2.1, "SPEAKER_00"), (2.4, 5.5, "SPEAKER_01")]
    html = timeline("call.wav", 6.0, reference, hypothesis, audio[0], "DER 0.100")
    (run / "curves.png").write_bytes(b"")  # a run's curves, linked from the page
    (run / "report.html").write_text(page("calls/test", [("Who spoke when", html)], curves="curves.png"))

    seen = check_report(run, tmp_path / "check", also="""(async function () {
      var turns = document.querySelectorAll('.turn'), audio = document.querySelector('audio');
      audio.preload = 'auto';
      await new Promise(function (done) {
        if (audio.readyState >= 1) { done(); } else { audio.addEventListener('loadedmetadata', done); }
      });
      turns[1].click();  // the reference's B, from 2.5 s
      await new Promise(function (done) { setTimeout(done, 300); });
      audio.pause();
      return {turns: turns.length, now: audio.currentTime,
              head: parseFloat(document.querySelector('.playhead').style.left)};
    })()""")
    assert seen["also"]["turns"] == 4 and 2.5 <= seen["also"]["now"] < 3.5, seen["also"]
    assert abs(seen["also"]["head"] - 100 * seen["also"]["now"] / 6.0) < 10  # the playhead follows the audio
    assert "curves.png" in seen["links"]
