"""report.html: an evaluation a person reads in a browser, one self-contained file (inline CSS, pictures as data
URIs, no script, nothing fetched). The tasks fill in its sections (speechkit/tasks/); this module only lays them out.

Speech recognition: WER/CER and the decoder, WER by clip duration (table and bar chart), the most frequent
substitutions, insertions and deletions, and every utterance's reference and hypothesis aligned word by word with
the errors marked. Classification: the scores, the per-class table and the confusion matrix.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from typing import Dict, Iterable, List, Sequence, Tuple

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
"""
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


def page(title: str, sections: List[Tuple[str, str]]) -> str:
    body = "".join(f"<h2>{esc(name)}</h2>{content}" if name else content for name, content in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n")


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
                 decoder: str, top: int = 15) -> List[Tuple[str, str]]:
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
    per_utt = jiwer.wer  # each line's own WER
    lines = "".join(f"<tr><td>{esc(ids[k])}<br>{durations[k]:.1f} s, WER {per_utt(references[k], hypotheses[k]):.2f}"
                    f"</td><td>{aligned(words, k)}</td></tr>" for k in range(len(references)))
    return [("", summary), ("WER by clip duration", by_duration), ("Most frequent errors", errors),
            ("Every utterance, aligned", legend + f"<table class='utt'>{lines}</table>")]


# --------------------------------------------------------------------------------------------- classification
def classification_sections(metrics: Dict[str, float], per_class: List[dict], confusion, labels: List[str],
                            predictions: List[dict], ids: List[str]) -> List[Tuple[str, str]]:
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
    wrong = [(ids[k], p["reference"], p["prediction"], p["score"]) for k, p in enumerate(predictions)
             if not int(p["correct"])]
    sections.append((f"Clips the top label got wrong ({len(wrong)})",
                     table(["clip", "reference", "prediction", "score"], wrong) if wrong else "<p>none</p>"))
    return sections
