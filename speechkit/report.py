"""report.html: an evaluation a person reads, and listens to, in a browser. One page (inline CSS and script, pictures
as data URIs, nothing fetched from the network) beside the run dir's clips/ folder, whose evaluated clips its audio
players play by a relative link, so the page still plays them when the run dir is copied elsewhere. The tasks fill
in its sections (speechkit/tasks/); this module only lays them out.

Speech recognition: WER/CER and the decoder, WER by clip duration (table and bar chart), the most frequent
substitutions, insertions and deletions, and every utterance's reference and hypothesis aligned word by word with
the errors marked, its clip beside it; the table sorts by WER and filters to the utterances with errors.
Classification: the scores, the per-class table, the confusion matrix and the clips it got wrong, each playable.
Diarization: the scores, the per-recording table, and each recording's reference and hypothesis turns on one
timeline with its audio (a click on a turn plays it). Every report links the training curves when the run dir has
them (curves.png).
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import jiwer
import numpy as np

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } td, th { padding: .2em .7em; border-bottom: 1px solid #eee;
text-align: left; vertical-align: top; } th { background: #f6f6f6; } td.n { text-align: right; }
.big { font-size: 1.6em; font-weight: 600; margin-right: 1.5em; }
.sub { background: #fde2b8; } .del { background: #f8c9c9; text-decoration: line-through; }
.ins { background: #cdeccf; } .legend span { margin-right: 1em; padding: 0 .3em; }
.utt td:first-child { color: #777; white-space: nowrap; } .ok { color: #2a7a2a; } .bad { color: #b22; }
audio { height: 2em; max-width: 22em; } .utt td:last-child { overflow-wrap: anywhere; }
.controls { margin: .5em 0; } .controls button { margin-right: .5em; }
.tl { position: relative; margin: .3em 0 .2em 13em; } .lane { position: relative; height: 1.3em; margin: 2px 0;
background: #f6f6f6; } .lane .who { position: absolute; left: -16em; width: 15.5em; font-size: .8em; color: #555;
overflow: hidden; white-space: nowrap; text-align: right; }
.turn { position: absolute; top: 0; bottom: 0; cursor: pointer; opacity: .85; }
.turn:hover { opacity: 1; outline: 1px solid #333; } .rec { margin: 1.2em 0; }
.playhead { position: absolute; top: 0; bottom: 0; width: 2px; background: #d00; pointer-events: none; }
"""
# Sorting and filtering a table of rows (class 'rows'): each row's data-sort value and data-error flag, and the
# timelines' playheads and clickable turns; no library, nothing fetched.
SCRIPT = """
document.querySelectorAll('table.rows').forEach(function (table) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows, 1);
  var bar = document.getElementById(table.dataset.controls), shown = bar.querySelector('.shown');
  function count() {
    shown.textContent = rows.filter(function (r) { return r.style.display !== 'none'; }).length + ' of ' +
      rows.length + ' shown';
  }
  function order(key, descending) {
    rows.slice().sort(function (a, b) {
      var x = parseFloat(a.dataset[key]), y = parseFloat(b.dataset[key]);
      return descending ? y - x : x - y;
    }).forEach(function (r) { body.appendChild(r); });
  }
  bar.querySelector('.by-score').addEventListener('click', function () { order('sort', true); });
  bar.querySelector('.by-order').addEventListener('click', function () { order('order', false); });
  var only = bar.querySelector('.only-errors');
  if (only) {
    only.addEventListener('change', function () {
      rows.forEach(function (r) { r.style.display = only.checked && r.dataset.error !== '1' ? 'none' : ''; });
      count();
    });
  }
  count();
});
document.querySelectorAll('.rec').forEach(function (rec) {
  var audio = rec.querySelector('audio'), head = rec.querySelector('.playhead');
  var seconds = parseFloat(rec.dataset.seconds);
  if (!audio) { return; }
  audio.addEventListener('timeupdate', function () {
    head.style.left = (100 * Math.min(audio.currentTime / seconds, 1)) + '%';
  });
  rec.querySelectorAll('.turn').forEach(function (turn) {
    turn.addEventListener('click', function () {
      audio.currentTime = parseFloat(turn.dataset.start);
      audio.play();
    });
  });
});
"""
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
DURATION_BUCKETS = ((0, 2), (2, 5), (5, 10), (10, 20), (20, float("inf")))  # seconds


def esc(value) -> str:
    return html.escape(str(value))


def table(header: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[bool] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class='n'>{esc(c)}</td>" if i < len(numeric) and numeric[i]
                                    else f"<td>{esc(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def png(figure) -> str:
    """A matplotlib figure as an inline <img> (a data URI: the page stays one file)."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=100)
    return f"<img alt='' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def page(title: str, sections: List[Tuple[str, str]], curves: Optional[str] = None) -> str:
    """The report: its sections, and the training curves (`curves`: their path relative to the page) when the run
    dir has them."""
    if curves:
        sections = [*sections, ("Training curves", f"<p><a href='{esc(curves)}'>{esc(curves)}</a>: loss, learning "
                                f"rate and the eval scores by step</p><a href='{esc(curves)}'><img alt='training "
                                f"curves' src='{esc(curves)}' style='max-width:100%'></a>")]
    body = "".join(f"<h2>{esc(name)}</h2>{content}" if name else content for name, content in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}<script>{SCRIPT}</script></body>"
            "</html>\n")


def player(src: Optional[str]) -> str:
    """An audio player for a clip of the run dir's clips/ folder (`src` relative to the page); a note where the clip
    was not kept."""
    if not src:
        return "<span class='sub-note'>(clip not kept: see the note above)</span>"
    return f"<audio controls preload='metadata' src='{esc(src)}'></audio>"


def controls(name: str, score: str, errors: Optional[str], kept: str) -> str:
    """The buttons that sort a table of rows by its score (worst first) or put it back in order, the box that
    filters it to the rows with errors, and how many clips have a player."""
    only = f"<label><input type='checkbox' class='only-errors'> only {esc(errors)}</label> " if errors else ""
    return (f"<p class='controls' id='{name}'><button type='button' class='by-score'>{esc(score)}</button>"
            f"<button type='button' class='by-order'>original order</button>{only}<span class='shown'></span></p>"
            f"<p>{esc(kept)}</p>")


def rows_table(name: str, header: Sequence[str], rows: Iterable[Tuple[float, bool, Sequence[str]]]) -> str:
    """A table of rows that the page's script sorts and filters: each row (its score, whether it has an error, its
    cells as HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr data-sort='{score:.6f}' data-order='{k}' data-error='{int(error)}'>"
                   + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for k, (score, error, cells) in enumerate(rows))
    return f"<table class='rows utt' data-controls='{name}'><tr>{head}</tr>{body}</table>"


# ----------------------------------------------------------------------------------------- speech recognition
def aligned(words: jiwer.WordOutput, k: int) -> str:
    """Utterance k's reference and hypothesis as one line of words, errors marked: a substitution shows the
    reference word struck through and the hypothesis word after it."""
    ref, hyp, out = words.references[k], words.hypotheses[k], []
    for chunk in words.alignments[k]:
        r, h = ref[chunk.ref_start_idx:chunk.ref_end_idx], hyp[chunk.hyp_start_idx:chunk.hyp_end_idx]
        if chunk.type == "equal":
            out.append(esc(" ".join(r)))
        elif chunk.type == "delete":
            out.append(f"<span class='del'>{esc(' '.join(r))}</span>")
        elif chunk.type == "insert":
            out.append(f"<span class='ins'>{esc(' '.join(h))}</span>")
        else:
            out += [f"<span class='del'>{esc(a)}</span> <span class='sub'>{esc(b)}</span>" for a, b in zip(r, h)]
    return " ".join(out)


def wer_by_duration(references: List[str], hypotheses: List[str],
                    durations: np.ndarray) -> List[Tuple[str, int, float]]:
    buckets = []
    for low, high in DURATION_BUCKETS:
        pick = [i for i, d in enumerate(durations) if low <= d < high]
        if pick:
            name = f"{low:g}-{high:g} s" if high != float("inf") else f"{low:g} s and longer"
            buckets.append((name, len(pick), jiwer.wer([references[i] for i in pick], [hypotheses[i] for i in pick])))
    return buckets


def asr_sections(references: List[str], hypotheses: List[str], durations: np.ndarray, ids: List[str],
                 decoder: str, audio: Optional[Dict[int, str]] = None, kept: str = "",
                 top: int = 15) -> List[Tuple[str, str]]:
    """Speech recognition's sections; `audio`: utterance k's clip (relative to the page), where it was kept."""
    words = jiwer.process_words(references, hypotheses)
    chars = jiwer.process_characters(references, hypotheses)
    substitutions, insertions, deletions = jiwer.collect_error_counts(words)
    summary = (f"<p><span class='big'>WER {words.wer:.4f}</span><span class='big'>CER {chars.cer:.4f}</span></p>"
               f"<p>{len(references)} utterances, {sum(len(r) for r in words.references)} reference words: "
               f"{words.substitutions} substituted, {words.deletions} deleted, {words.insertions} inserted. "
               f"Decoder: {esc(decoder)}.</p>")
    buckets = wer_by_duration(references, hypotheses, durations)
    from speechkit.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar([b[0] for b in buckets], [b[2] for b in buckets], color="tab:blue")
    ax.set_ylabel("WER")
    ax.set_xlabel("clip duration")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    chart = png(fig)
    plt.close(fig)
    by_duration = table(["duration", "utterances", "WER"], [(n, c, f"{w:.4f}") for n, c, w in buckets],
                        [False, True, True]) + chart

    def most(counter: Counter, fmt) -> str:
        return table(["", "count"], [(fmt(k), v) for k, v in Counter(counter).most_common(top)], [False, True]) \
            if counter else "<p>none</p>"

    errors = ("<div style='display:flex;gap:2em;flex-wrap:wrap'>"
              f"<div><b>substitutions</b> (reference → hypothesis)"
              f"{most(substitutions, lambda k: f'{k[0]} → {k[1]}')}</div>"
              f"<div><b>deletions</b>{most(deletions, str)}</div><div><b>insertions</b>{most(insertions, str)}</div>"
              "</div>")
    legend = ("<p class='legend'><span class='del'>deleted or substituted reference word</span>"
              "<span class='sub'>what was heard instead</span><span class='ins'>inserted word</span></p>")
    audio = audio or {}
    rates = [jiwer.wer(references[k], hypotheses[k]) for k in range(len(references))]  # each line's own WER
    lines = rows_table("utterances", ["utterance", "clip", "reference and hypothesis"], (
        (rates[k], rates[k] > 0, [f"{esc(ids[k])}<br>{durations[k]:.1f} s, WER {rates[k]:.2f}", player(audio.get(k)),
                                  aligned(words, k)]) for k in range(len(references))))
    return [("", summary), ("WER by clip duration", by_duration), ("Most frequent errors", errors),
            ("Every utterance, aligned", legend + controls("utterances", "worst WER first", "utterances with errors",
                                                           kept) + lines)]


# --------------------------------------------------------------------------------------------- classification
def classification_sections(metrics: Dict[str, float], per_class: List[dict], confusion, labels: List[str],
                            predictions: List[dict], ids: List[str], audio: Optional[Dict[int, str]] = None,
                            kept: str = "") -> List[Tuple[str, str]]:
    """Classification's sections; `audio`: clip k's file (relative to the page), where it was kept."""
    names = {"eval_accuracy": "accuracy", "eval_macro_f1": "macro-F1", "eval_map": "mAP"}
    summary = "<p>" + "".join(f"<span class='big'>{n} {metrics[k]:.4f}</span>" for k, n in names.items()
                              if k in metrics) + f"</p><p>{len(predictions)} clips.</p>"
    classes = table(["label", "precision", "recall", "F1", "support"],
                    [(r["label"], r["precision"], r["recall"], r["f1"], r["support"]) for r in per_class],
                    [False, True, True, True, True])
    sections = [("", summary), ("Per class", classes)]
    if confusion:
        from speechkit.plots import confusion_figure, pyplot

        fig = confusion_figure(labels, confusion)
        sections.append(("Confusion matrix", png(fig)))
        pyplot().close(fig)
    audio = audio or {}
    wrong = [(float(p["score"]), True, [esc(ids[k]), player(audio.get(k)), esc(p["reference"]), esc(p["prediction"]),
                                        esc(p["score"])]) for k, p in enumerate(predictions) if not int(p["correct"])]
    sections.append((f"Clips the top label got wrong ({len(wrong)})",
                     controls("wrong", "most confident first", None, kept)
                     + rows_table("wrong", ["clip", "listen", "reference", "prediction", "score"], wrong)
                     if wrong else "<p>none</p>"))
    return sections


# ------------------------------------------------------------------------------------------------ diarization
def timeline(name: str, seconds: float, reference: List[tuple], hypothesis: List[tuple], src: Optional[str],
             caption: str) -> str:
    """One recording: each speaker's turns ((start, end, speaker)) on a lane, the reference's above the model's, a
    playhead that follows the audio player, and a click on a turn playing from its start."""
    seconds = max([seconds, 1e-3] + [b for _, b, _ in reference + hypothesis])
    lanes = []
    for side, turns in (("reference", reference), ("speechkit", hypothesis)):
        for k, who in enumerate(sorted({w for _, _, w in turns})):
            bars = "".join(f"<div class='turn' style='left:{100 * a / seconds:.3f}%;"
                           f"width:{100 * (b - a) / seconds:.3f}%;background:{COLOURS[k % len(COLOURS)]}' "
                           f"data-start='{a:.3f}' "
                           f"title='{esc(who)} {a:.2f}-{b:.2f} s'></div>" for a, b, w in turns if w == who)
            lanes.append(f"<div class='lane'><span class='who'>{esc(side)} {esc(who)}</span>{bars}</div>")
    return (f"<div class='rec' data-seconds='{seconds:.3f}'><b>{esc(name)}</b> {esc(caption)}"
            f"<div class='tl'>{''.join(lanes)}<div class='playhead' style='left:0'></div></div>{player(src)}</div>")
