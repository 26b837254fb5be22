"""Tasks (conf/task): what a row's target is, which head the model gets, how batches are collated, how the loss and
the predictions are computed and scored, which result is best, and what ships beside the weights in model/.

The trainer and the entry scripts only talk to a task through these members (both tasks have them all):

  name, head, target, unit    the task's name, the model head it needs (ctc/classification), the data column it
                              learns from (text/label), what a clip is called
  fit_targets(train, eval, splits, report, run_dir, is_main) -> (train, eval)
                              training: the vocab or label set, from the training split
  describe_targets()          "31 symbols", "12 classes"
  build_model(model_cfg, run_dir)
                              training: the model with its head, and the processor that ships with it
  from_model_dir(dir)         a saved model and its task (evaluate.py)
  check_eval_rows(rows, split, report)
                              evaluation rows the model cannot score are reported
  dataset(rows, training), collator(training), forward(model, batch) -> output with .loss
  target_of(value, audio) -> (target, reason, detail), crop
                              a streamed training row's target, or why it is dropped; the length training clips are
                              cut to (dataset.streaming, speechkit/data/streaming.py)
  evaluate(model, loader, dataset, accelerator) -> EvalResult (speechkit/tasks/scoring.py)
  after_training(model, eval_set, accelerator, run_dir, result, batch_size) -> EvalResult
                              the task's last step on the shipped model (speech recognition: the n-gram LM)
  save(path)                  the processor / feature extractor beside the weights
  examples(result, n)         a few lines for the console
  report_sections(result, ids, durations)
                              report.html's sections (speechkit/report.py)
"""

from __future__ import annotations

from speechkit.config import ConfigError, TaskName


def make_task(cfg):
    """The task a training config asks for (cfg.task.name)."""
    if cfg.task.name == TaskName.asr:
        from speechkit.tasks.asr import SpeechRecognition

        from speechkit.data.text import TextNormalizer

        normalizer = TextNormalizer(cfg.dataset.text)
        return SpeechRecognition(cfg.vocab, decoder_cfg=cfg.decoder, normalize=lambda t: normalizer(t).text)
    if cfg.task.name == TaskName.diarization:
        from speechkit.tasks.diarization import Diarization

        return Diarization(cfg.task, cfg.model.sampling_rate)
    from speechkit.tasks.classification import AudioClassification

    return AudioClassification(cfg.task, cfg.model)


def load_model_dir(model_dir: str, multi_label=None, collar_s=None, skip_overlap=None):
    """(task, model) of a saved model (a folder, or a Hub id), the task read from its config: a CTC head is speech
    recognition, a classification head audio classification, a frame-level head diarization (`multi_label`,
    `collar_s`, `skip_overlap`: see EvaluateConfig)."""
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(model_dir).architectures or []
    if any(a.endswith("ForCTC") for a in architectures):
        from speechkit.tasks.asr import SpeechRecognition

        return SpeechRecognition.from_model_dir(model_dir)
    if any(a.endswith(("ForAudioClassification", "ForSequenceClassification")) for a in architectures):
        from speechkit.tasks.classification import AudioClassification

        return AudioClassification.from_model_dir(model_dir, multi_label)
    if any(a.endswith("ForAudioFrameClassification") for a in architectures):
        from speechkit.tasks.diarization import Diarization

        return Diarization.from_model_dir(model_dir, collar_s, skip_overlap)
    raise ConfigError(f"model_dir: {model_dir} holds a {architectures or 'model of no known architecture'}; speechkit "
                      "scores CTC (speech recognition), audio-classification and frame-classification (diarization) "
                      "models")
