"""Typed schemas for every config group, registered in Hydra's ConfigStore (speechkit/cli.py: register_configs).

Each dataclass is the contract of one folder under conf/ (conf/task: one schema per option): the YAML files there only
fill in values.
Because the composed config is checked against these schemas, a misspelt key, a value of the wrong type
or an unknown enum member fails at composition time with a message naming the key, before any data is
touched or any model is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


# --------------------------------------------------------------------------------------- conf/dataset
class Source(str, Enum):
    audiofolder = "audiofolder"  # local folder: audio files + metadata.csv (Hugging Face convention)
    hub = "hub"  # anything datasets.load_dataset can open: a Hub repo id or a local builder/dir
    demo = "demo"  # speech synthesized offline with espeak-ng, then read back as an audiofolder


class Digits(str, Enum):
    keep = "keep"
    remove = "remove"
    drop_example = "drop_example"  # when numbers are read aloud, "12" cannot be spelt from the audio


@dataclass
class TextConfig:
    lowercase: bool = True  # transcripts lowercased before the vocab is built and before scoring
    unidecode: bool = False  # transliterate to ASCII: "canción" -> "cancion"
    # Characters deleted before the vocab is built. Apostrophes are kept by default (English "don't").
    chars_to_ignore: Optional[str] = r"[\,\?\.\!\-\;\:\"“”%‘’«»…—–()\[\]{}¿¡/\\*#&@^_`|~+=<>]"
    digits: Digits = Digits.keep  # what is done with transcripts that hold digits


@dataclass
class FiltersConfig:
    # Duration limits apply to the training split only, so that evaluation scores every utterance.
    min_duration_s: float = 0.0
    max_duration_s: Optional[float] = 20.0  # as the Hugging Face CTC example script
    # A clip whose peak absolute amplitude is at or below this is treated as silent and dropped.
    silence_peak: float = 1e-4


@dataclass
class CarveConfig:
    """Carve a held-out split out of one source split (e.g. the SUPERB recipe's 80/20 split)."""

    from_split: Optional[str] = None  # the split to hold test_ratio of out of (e.g. train); null: no carving
    test_ratio: float = 0.2  # the share of from_split's rows held out
    seed: int = 42  # the shuffle before the cut: the same seed, the same held-out rows
    train_name: str = "train"  # the name the rest gets (dataset.train_split reads it)
    test_name: str = "test"  # the name the held-out part gets (dataset.eval_split reads it)


@dataclass
class ColumnsConfig:
    """What the data set calls each column: its audio, and each kind of target it may hold. A task reads the one it
    learns from (speech recognition `text`, classification `label`, diarization `rttm` or `segments`)."""

    audio: str = "audio"  # the audio (Hub data sets; an audiofolder names its files in `file`)
    file: str = "file_name"  # audiofolder: the metadata.csv column naming each audio file (relative to the csv)
    text: str = "transcription"  # the transcript
    # each clip's class: a string, or a list of them for multi-label data such as AudioSet (a string holding several
    # is split at ";")
    label: str = "label"
    rttm: str = "rttm"  # audiofolder: the metadata.csv column naming each recording's RTTM file (who spoke when)
    # Hub data sets: the columns holding each recording's turns as lists of start seconds, end seconds and speakers
    # (talkbank/callhome's layout)
    segments: List[str] = field(default_factory=lambda: ["timestamps_start", "timestamps_end", "speakers"])


@dataclass
class DemoCorpusConfig:
    language: str = "en"  # the grammar the sentences come from (en, es)
    voices: List[str] = field(default_factory=lambda: ["en-us"])  # espeak-ng voices the clips are spoken by
    speeds: List[int] = field(default_factory=lambda: [160])  # words per minute
    pitches: List[int] = field(default_factory=lambda: [50])  # 0..99
    num_train: int = 400  # training clips (or recordings) synthesized
    num_test: int = 50  # test clips (or recordings) synthesized
    seed: int = 0  # the corpus is the same for the same settings and seed (and cached as such)
    # A spoken-command corpus instead of sentences: each clip says one of these words, its label (column `label`).
    words: List[str] = field(default_factory=list)
    test_voices: List[str] = field(default_factory=list)  # commands: voices heard in the test split only
    # Conversations instead (speaker diarization, column `rttm`): each recording has one of these numbers of speakers
    speakers: List[int] = field(default_factory=list)
    turns: int = 6  # conversations: sentences per recording
    # sentences: a shifted test set instead (dataset=demo_en_shifted): the test split's sentences spoken by these
    # voices only (none of `voices`), as splits test (clean), test_noisy (white noise at shifted_snr_db) and
    # test_reverb (a simulated room of shifted_rt60_s); no train split
    shifted_voices: List[str] = field(default_factory=list)
    shifted_snr_db: float = 10.0  # shifted: the signal-to-noise ratio of the test_noisy split (dB)
    shifted_rt60_s: float = 0.6  # shifted: the reverberation time of the test_reverb split's room (s)
    # where the synthesized corpora are kept and reused ($SPEECHKIT_CACHE/demo)
    cache_dir: str = "${oc.env:SPEECHKIT_CACHE,'~/.cache/speechkit'}/demo"


@dataclass
class DatasetConfig:
    """conf/dataset: where the audio and its targets come from (a local audio folder, a Hub data set or the offline
    demo corpora), which splits train and score, how transcripts are normalized and which clips are left out."""

    name: str = MISSING  # the data set's name in messages, run titles and the model card (its conf/dataset option)
    source: Source = MISSING  # where the audio comes from
    path: Optional[str] = MISSING  # Hub repo id, or local directory; null for the demo
    config_name: Optional[str] = None  # Hub configuration, e.g. "es_419"
    revision: Optional[str] = None  # Hub git revision (branch, tag or commit)
    data_dir: Optional[str] = None  # sub-folder of the repo holding this data set's files (e.g. a language)
    train_split: str = "train"  # the split trained on
    eval_split: str = "test"  # the split scored during and after training
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    carve: CarveConfig = field(default_factory=CarveConfig)
    text: TextConfig = field(default_factory=TextConfig)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    demo: DemoCorpusConfig = field(default_factory=DemoCorpusConfig)
    num_proc: Optional[int] = None  # processes for the one-off decode-and-check pass
    language: Optional[str] = None  # ISO 639-1 code for the model card (the demo corpora: demo.language)
    # Keep every clip as decoded by the checking pass (mono, int16, at the model's rate) in the datasets cache,
    # memory-mapped: later epochs and later runs never decode again. false: decode each clip when it is batched
    # (a corpus too large for the disk).
    cache_audio: bool = True
    # Train from a stream (speechkit/data/streaming.py): a Hub data set streamed, or a local folder's files read as
    # batches are made; rows checked as they come, nothing decoded ahead or cached. For corpora larger than the disk
    # or the RAM. Needs trainer.max_steps (a stream has no length); the evaluation split is still read whole.
    streaming: bool = False
    # streaming: rows read ahead, shuffled and batched together (memory holds this many clips, never the corpus)
    shuffle_buffer: int = 1000

    def spoken_language(self) -> Optional[str]:
        """The language of the speech: dataset.language, or a demo corpus's own (dataset.demo.language)."""
        return self.language or (self.demo.language if self.source == Source.demo else None)


# ------------------------------------------------------------------------------------------ conf/task
# One schema per option of conf/task, each with its own knobs only; speechkit/tasks/__init__.py registers them.
class DecoderType(str, Enum):
    greedy = "greedy"  # CTC: the most likely symbol per frame; sequence to sequence: generation (num_beams)
    kenlm = "kenlm"  # CTC: beam search with a word n-gram LM (pyctcdecode + KenLM), shipped inside model/


class VocabSource(str, Enum):
    auto = "auto"  # the head kind's choice: CTC, data; generation, pretrained where there is a checkpoint
    data = "data"  # built from the training transcripts (a CTC vocab of characters, a from-scratch tokenizer)
    pretrained = "pretrained"  # the pretrained checkpoint's own tokenizer, and its head, kept


@dataclass
class VocabConfig:
    """task=asr: the symbols transcripts become: a character vocab (speechkit/kinds/ctc/vocab.py) built from the
    training transcripts, or the pretrained checkpoint's own tokenizer."""

    # where the symbols come from: data (the training transcripts) or pretrained (the checkpoint's tokenizer and its
    # head kept); auto: the head kind's choice (CTC: data; generation: pretrained where there is a checkpoint)
    source: VocabSource = VocabSource.auto
    path: Optional[str] = None  # reuse an existing vocab.json instead of building one
    include_eval_text: bool = False  # build the vocab from the evaluation transcripts too
    word_delimiter: str = "|"  # the symbol that stands for a space between words
    unk_token: str = "[UNK]"  # the symbol of a character the vocab does not have
    pad_token: str = "[PAD]"  # doubles as the CTC blank


@dataclass
class DecoderConfig:
    """task=asr: how the shipped model's output becomes text: a CTC model's frames (speechkit/kinds/ctc/lm.py), or a
    sequence-to-sequence model's generation (speechkit/kinds/generation/)."""

    type: DecoderType = DecoderType.greedy  # how frames (CTC) become text
    # sequence to sequence (Whisper): beams searched when generating (1: greedy), and the most tokens generated per
    # clip (null: the model's max_target_positions, less its prompt); both ship in its generation config
    num_beams: int = 1
    max_new_tokens: Optional[int] = None  # sequence to sequence: the most tokens generated per clip
    order: int = 3  # n-gram order of the LM
    discount: float = 0.75  # Kneser-Ney absolute discount
    # The LM's text (normalized as the transcripts): a file of one sentence per line, or a Hub text data set; both
    # null: the training transcripts.
    text_file: Optional[str] = None
    text_dataset: Optional[str] = None  # a Hub text data set for the LM instead of a file
    text_split: str = "train"  # text_dataset: the split read
    text_column: str = "text"  # text_dataset: the column read
    alpha: float = 0.5  # LM weight
    beta: float = 1.0  # word insertion bonus
    tune: bool = False  # search alpha and beta on the evaluation split; the best pair ships
    tune_trials: int = 24  # pairs tried: the configured one, then seeded random ones (alpha 0-2, beta -1-3)
    tune_seed: int = 0  # tune: the seed of the random pairs tried


class WhisperTask(str, Enum):
    transcribe = "transcribe"  # the text of what is said, in its language
    translate = "translate"  # its English translation (Whisper's second task)


@dataclass
class AsrConfig:
    """task=asr: speech recognition, scored by WER and CER (speechkit/tasks/asr.py), by the model's head kind
    (speechkit/kinds/): a CTC head over characters (wav2vec2-like encoders, w2v-BERT), or a sequence-to-sequence
    model that generates tokens (Whisper, Moonshine)."""

    name: str = "asr"  # the task (set by task=asr)
    vocab: VocabConfig = field(default_factory=VocabConfig)  # CTC: the character vocab
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    ctc_loss_reduction: str = "mean"  # the CTC loss averaged over the batch ("mean") or summed ("sum")
    ctc_zero_infinity: bool = True  # an impossible alignment (a transcript longer than its frames) costs 0, not inf
    # sequence to sequence (Whisper): the task token of its prompt (the language token is dataset.language's)
    whisper_task: WhisperTask = WhisperTask.transcribe
    # score references and hypotheses after Whisper's English text normalizer too (as the Hugging Face blog scores);
    # the dataset's own normalization (dataset.text) applies either way
    whisper_normalizer: bool = False
    # sequence to sequence: the weight of an auxiliary CTC loss on the encoder's frames (ESPnet's hybrid
    # CTC/attention training) through a linear layer that trains with the model and is left out of what ships; it
    # helps a model trained from scratch find the alignment sooner. 0: off
    whisper_ctc_weight: float = 0.0
    # add this many clips of silence and as many of noise to every evaluation and report the words the model emits
    # on them (ideally none): eval_probe_words in metrics.jsonl, the log, curves.png and report.html
    hallucination_probe: int = 0


class LabelSet(str, Enum):
    data = "data"  # every label of the training split, sorted; a fresh classification head
    checkpoint = "checkpoint"  # the pretrained checkpoint's id2label, head kept (AST on AudioSet); other labels dropped


@dataclass
class ClassificationConfig:
    """task=audio_classification: one class per clip, or several (speechkit/tasks/classification.py)."""

    name: str = "audio_classification"  # the task (set by task=audio_classification)
    # several labels per clip (sigmoid, mAP) instead of one (softmax, accuracy)
    multi_label: bool = False
    # training clips longer than this are cut to a random window of it (null: the model's own input window, e.g.
    # AST's max_length frames; no cut for wav2vec2)
    max_length_s: Optional[float] = None
    label_set: LabelSet = LabelSet.data  # where the label set comes from


@dataclass
class DiarizationConfig:
    """task=diarization: who spoke when, speaker activity per frame, scored by DER
    (speechkit/tasks/diarization.py)."""

    name: str = "diarization"  # the task (set by task=diarization)
    # speakers the model tells apart in one window (its output channels; permutation-invariant loss)
    max_speakers: int = 3
    # seconds of audio per training chunk and per inference window (windows overlap by half)
    chunk_s: float = 5.0
    # a speaker is active in a frame when the model's probability is above this
    threshold: float = 0.5
    # turns shorter than this are removed, and pauses of a speaker shorter than this are filled
    min_turn_s: float = 0.1
    # scoring (DER): seconds around each reference boundary not scored (0.25 is the usual collar), and whether regions
    # where references overlap are left unscored
    collar_s: float = 0.25
    skip_overlap: bool = False  # scoring: leave regions where reference speakers overlap unscored


# ----------------------------------------------------------------------------------------- conf/model
@dataclass
class ModelConfig:
    """conf/model: the checkpoint fine-tuned (or the architecture built from scratch), the regularisation set on top
    of its config, and what is frozen. The task gives it its head (speechkit/models/: one module per family)."""

    name: str = MISSING  # the model's name in messages and the model card (its conf/model option)
    # Hub id or local directory of a pretrained checkpoint; null builds `architecture` from scratch.
    name_or_path: Optional[str] = MISSING
    revision: Optional[str] = None  # Hub git revision of the checkpoint (branch, tag or commit); null: main
    # Config fields for a randomly initialised model (used only when name_or_path is null); `model_type` names the
    # architecture (wav2vec2 when absent; hubert, wavlm, wav2vec2-bert, whisper, audio-spectrogram-transformer ...),
    # and so its family (speechkit/models/). A from-scratch Whisper's input window follows its `max_source_positions`
    # (20 ms each: 1500 for the checkpoints' 30 s, 200 for 4 s).
    architecture: Dict[str, Any] = field(default_factory=dict)
    sampling_rate: int = 16000  # audio is resampled to this rate (Hz) for the model
    # Regularisation knobs set on top of the checkpoint's (or the architecture's) config; null leaves that value as
    # the checkpoint says, as a recipe that does not set it had it.
    attention_dropout: Optional[float] = None  # dropout of the attention weights
    hidden_dropout: Optional[float] = None  # dropout of the transformer layers' outputs
    activation_dropout: Optional[float] = None  # dropout inside the feed-forward layers
    feat_proj_dropout: Optional[float] = None  # dropout after the feature projection (wav2vec2-like)
    final_dropout: Optional[float] = None  # dropout before the CTC head
    mask_time_prob: Optional[float] = None  # SpecAugment-style time masking in the model (wav2vec2-like)
    layerdrop: Optional[float] = None  # the chance of skipping each transformer layer in a training step
    # Fields of the model's config set on top of the checkpoint's (or the architecture's), for what the knobs above do
    # not name, e.g. w2v-BERT's adapter ({add_adapter: true}); a field the model does not have is refused.
    config_overrides: Dict[str, Any] = field(default_factory=dict)
    freeze_feature_encoder: bool = True  # the convolutional encoder of wav2vec2-like models (w2v-BERT, AST: none)
    freeze_encoder: bool = False  # an encoder-decoder model (Whisper): train the decoder only
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time


# -------------------------------------------------------------------------------------------- conf/hw
class Backend(str, Enum):
    auto = "auto"  # ROCm GPU, else CUDA GPU, else CPU; says which it picked
    cuda = "cuda"
    rocm = "rocm"
    cpu = "cpu"
    sagemaker = "sagemaker"  # not a device: submits the run as a SageMaker training job (speechkit/sagemaker/)


class Distribution(str, Enum):
    auto = "auto"  # torchrun when the job has more than one GPU in total, else one process
    none = "none"
    torchrun = "torchrun"


class Precision(str, Enum):
    auto = "auto"  # fp16 on CUDA, bf16 on ROCm (MI300), none on the CPU
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


@dataclass
class HardwareConfig:
    """conf/hw: the device the run trains on and its precision (speechkit/hardware.py builds the Accelerator);
    hw=sagemaker submits the run as a SageMaker training job instead."""

    backend: Backend = Backend.auto  # the device (hw=<option> sets it)
    mixed_precision: Precision = Precision.auto  # refused where the device cannot do it, never a silent fallback
    num_threads: Optional[int] = None  # CPU intra-op threads; null keeps torch's default
    # ROCm: where MIOpen keeps its tuned-kernel database, so the kernel search is paid once, not every run.
    miopen_cache_dir: Optional[str] = None


@dataclass
class SageMakerConfig:
    """hw=sagemaker: the remote training job (and deploy.py's endpoint account). Read only when hw.backend is
    sagemaker; `hw=sagemaker` stays the one switch users type."""

    region: Optional[str] = None  # null: the AWS config / AWS_DEFAULT_REGION
    role: Optional[str] = None  # required: IAM role ARN the job (and endpoint) runs as
    bucket: Optional[str] = None  # required: S3 bucket for the code, the data channel, outputs and checkpoints
    prefix: Optional[str] = "speechkit"  # key prefix inside the bucket
    instance_type: str = "ml.p3.2xlarge"  # one V100, as the AWS recipe
    instance_count: int = 1  # machines in the training job
    gpus_per_instance: Optional[int] = None  # null: looked up for instance_type (decides the distribution)
    volume_size_gb: int = 100  # each machine's disk (GB)
    wait: bool = False  # true: wait for the job and stream its logs, else return the job name at once
    image_uri: Optional[str] = None  # explicit training image; null: the Hugging Face PyTorch image below
    transformers_version: str = "5.3.0"  # the Hugging Face training image: its transformers version
    pytorch_version: str = "2.9.0"  # ... its PyTorch version
    py_version: str = "py312"  # ... its Python
    max_run_s: int = 86400  # one day
    spot: bool = False  # managed spot training; checkpoints are kept in S3 and the job resumes from them
    max_wait_s: Optional[int] = None  # spot only: run time plus time waiting for capacity; null: 2 x max_run_s
    distribution: Distribution = Distribution.auto  # how the job starts its processes
    base_job_name: str = "speechkit"  # the job name's prefix (and a folder under prefix in the bucket)
    container_hw: Backend = Backend.cuda  # the hw option the job trains with inside the container
    container_mixed_precision: Precision = Precision.auto  # auto: fp16 on CUDA; bf16 on A100/H100 instances


# --------------------------------------------------------------------------------------- conf/trainer
class FinalModel(str, Enum):
    best = "best"  # weights with the lowest eval WER seen
    last = "last"


class OptimizerName(str, Enum):
    adamw = "adamw"  # torch.optim.AdamW (fused kernel on the CPU and GPUs): what both recipes used
    adafactor = "adafactor"  # torch.optim.Adafactor: factored second moments, a fraction of AdamW's memory
    adamw_8bit = "adamw_8bit"  # bitsandbytes' AdamW8bit: 8-bit moments (CUDA GPUs; needs `pip install bitsandbytes`)


class SchedulerName(str, Enum):
    linear = "linear"  # warmup, then linear decay to 0 (the recipes', and the Trainer's default)
    cosine = "cosine"  # warmup, then a half cosine to 0
    constant = "constant"  # warmup, then constant
    tri_stage = "tri_stage"  # wav2vec2 paper: warmup, hold (trainer.tri_stage.hold_ratio), linear decay


@dataclass
class TriStageConfig:
    """trainer.scheduler=tri_stage: the wav2vec 2.0 paper's fine-tuning schedule (warmup, then hold the peak for 40%
    of the steps, then decay linearly over the rest), as transformers' warmup-stable-decay schedule."""

    hold_ratio: float = 0.4  # of all steps, at the peak learning rate after the warmup
    final_lr_ratio: float = 0.05  # the learning rate the decay ends at (and the warmup starts from), times the peak


@dataclass
class TrainerConfig:
    """conf/trainer: the training loop (speechkit/training/): batches, optimizer and schedule, evaluation,
    checkpoints, resuming and what ships."""

    seed: int = 42  # random init, batch order, dropout and augmentation draws all follow it
    num_epochs: float = 10  # passes over the training split (a fraction ends mid-epoch)
    max_steps: Optional[int] = None  # overrides num_epochs when set
    batch_size: int = 8  # clips per batch, per device (when batch_duration_s is null)
    # Seconds of audio per batch, per device, padding counted (clips x longest clip; clips x the window for a model
    # fed a fixed window: Whisper, AST): batches of clips of similar length from length buckets, so short clips make
    # big batches and long ones small batches. null: batch_size.
    batch_duration_s: Optional[float] = None
    eval_batch_size: int = 8  # clips per evaluation batch, per device
    gradient_accumulation_steps: int = 1  # batches whose gradients add up to one optimizer step
    optimizer: OptimizerName = OptimizerName.adamw  # the optimizer (speechkit/training/optim.py)
    learning_rate: float = 1e-4  # the peak learning rate, reached after the warmup
    weight_decay: float = 0.0  # decoupled; never on biases and layer norms
    adam_beta1: float = 0.9  # adamw, adamw_8bit
    adam_beta2: float = 0.999  # adamw, adamw_8bit
    adam_epsilon: float = 1e-8  # adamw, adamw_8bit
    scheduler: SchedulerName = SchedulerName.linear  # the learning rate by step (speechkit/training/optim.py)
    warmup_steps: int = 500  # every schedule starts with a linear warmup of this many steps
    tri_stage: TriStageConfig = field(default_factory=TriStageConfig)
    max_grad_norm: float = 1.0  # gradients clipped to this norm before each step
    # batches of clips of similar duration (the order of batches still shuffled); null: where that cuts padding, not
    # for a model fed every clip padded to a fixed window (Whisper, AST), where it mostly trained worse (docs/speed.md)
    group_by_length: Optional[bool] = None
    num_workers: Optional[int] = None  # DataLoader worker processes; null: per backend (hardware.loader_settings)
    compile: bool = False  # torch.compile the model (pays on GPUs over long runs; compiling takes minutes on a CPU)
    fast_paths: bool = True  # faster computation of the same model, weights untouched (speechkit/models/fast_paths.py)
    logging_steps: int = 10  # optimizer steps per line of the log and of metrics.jsonl
    eval_steps: Optional[int] = None  # also evaluates at every epoch end
    eval_at_epoch_end: bool = True  # evaluate at the end of every epoch
    save_steps: Optional[int] = 500  # a checkpoint every this many steps (and at the end); null: at the end only
    save_total_limit: Optional[int] = 2  # the best checkpoint is kept on top of these
    resume: Optional[str] = None  # "auto": newest complete checkpoint in the run dir; or a checkpoint path
    final_model: FinalModel = FinalModel.best  # which weights ship in model/
    # which evaluation picks the best checkpoint (and judges weight averages): an eval_sets name; null: the run's own
    # split (dataset.eval_split)
    best_eval_set: Optional[str] = None
    # Weight averaging (speechkit/training/averaging.py), each scored at the end beside final_model's weights and
    # shipped only when it scores better: an exponential moving average of the weights (e.g. 0.999; null: off) ...
    ema_decay: Optional[float] = None
    average_last: Optional[int] = None  # ... and the mean of the last N checkpoints (e.g. 5; null: off)
    progress_bar: bool = True  # a progress bar on the console (the log lines come either way)


# --------------------------------------------------------------------------------------- conf/augment
@dataclass
class SpeedConfig:
    """Kaldi-style speed perturbation: each training clip resampled by one of `factors` (tempo and pitch change
    together, as sox's `speed`), drawn per clip and epoch; 1.0 leaves a clip as it is."""

    factors: List[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]; empty: off


@dataclass
class NoiseConfig:
    """Noise added to a share of the training clips at a signal-to-noise ratio drawn from [snr_db_min, snr_db_max]:
    recordings from `path` (a folder searched recursively, e.g. MUSAN's noise/ and music/), else noise speechkit
    makes itself: colored noise (white to brown) and babble (other training clips mixed together)."""

    prob: float = 0.0  # share of the clips that get noise; 0: off
    snr_db_min: float = 5.0  # the lowest signal-to-noise ratio drawn (dB)
    snr_db_max: float = 20.0  # the highest signal-to-noise ratio drawn (dB)
    path: Optional[str] = None  # a folder of noise recordings (any format FFmpeg reads); null: made noise
    babble_share: float = 0.3  # made noise only: the share of noisy clips whose noise is babble, the rest colored
    babble_speakers: int = 3  # other training clips mixed into one babble


@dataclass
class ReverbConfig:
    """A share of the training clips convolved with a room impulse response: simulated (exponentially decaying
    noise, an RT60 drawn from [rt60_s_min, rt60_s_max]) or one from `path` (a folder of impulse responses)."""

    prob: float = 0.0  # 0: off
    rt60_s_min: float = 0.2  # simulated rooms: the shortest reverberation time drawn (s)
    rt60_s_max: float = 0.8  # simulated rooms: the longest reverberation time drawn (s)
    path: Optional[str] = None  # a folder of room impulse responses (e.g. the RIRS_NOISES corpus); null: simulated


@dataclass
class GainConfig:
    """A share of the training clips made louder or quieter by a gain drawn from [db_min, db_max] (clipped at full
    scale)."""

    prob: float = 0.0  # 0: off
    db_min: float = -6.0  # the lowest gain drawn (dB)
    db_max: float = 6.0  # the highest gain drawn (dB)


@dataclass
class SpecAugmentConfig:
    """SpecAugment's time and frequency masks during training, in each family's own terms: wav2vec2-like encoders
    and Whisper mask their own features as their config says (mask_time_*, mask_feature_*; Whisper's
    apply_spec_augment), AST masks its filter bank frames and bins. null keeps what the model's config has."""

    enabled: bool = False  # mask the training clips' features; false: the model's config decides
    time_prob: Optional[float] = None  # share of time steps that start a mask (wav2vec2-like, Whisper)
    time_length: Optional[int] = None  # frames per time mask
    feature_prob: Optional[float] = None  # share of feature channels that start a mask (wav2vec2-like, Whisper)
    feature_length: Optional[int] = None  # channels per feature mask
    # AST: masks per clip, each up to time_length frames (null: a fifth of the window, as AST's AudioSet recipe has
    # 192 of 1024) and up to feature_length mel bins (null: 3/8 of them, the recipe's 48 of 128)
    time_masks: int = 2
    feature_masks: int = 2  # AST: frequency masks per clip


@dataclass
class AugmentConfig:
    """Training clips changed on the fly (speechkit/data/augment.py), each draw from (trainer.seed, epoch, clip):
    the same in every run, worker process and resume. Evaluation never augments. Applied in this order: speed,
    reverberation, noise, gain; SpecAugment inside the model."""

    speed: SpeedConfig = field(default_factory=SpeedConfig)
    # the share of clips that get reverberation, noise and gain grows linearly from none (the first epoch) to theirs
    # over this many epochs: a model built from scratch finds its alignments on clean audio first; 0: theirs at once
    warmup_epochs: float = 0.0
    reverb: ReverbConfig = field(default_factory=ReverbConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)


# --------------------------------------------------------------------------------------- conf/adapter
class AdapterKind(str, Enum):
    none = "none"  # every weight the model trains is trained (full fine-tuning)
    lora = "lora"  # low-rank updates of the attention and feed-forward projections (peft), the head trained in full
    mms = "mms"  # MMS's language adapters (wav2vec2's adapter layers, adapter_attn_dim) and the CTC head


class AdapterShip(str, Enum):
    merged = "merged"  # model/ holds whole weights (LoRA merged in): the stock pipeline loads it as it is
    adapter = "adapter"  # model/ holds the adapter and the head only, to load on top of the base model it names


@dataclass
class AdapterConfig:
    """Adapters (speechkit/models/adapters.py): the model's own weights frozen, small added weights trained with the
    task's head; checkpoints then hold those and the optimizer's state only."""

    name: AdapterKind = AdapterKind.none  # the option chosen (conf/adapter): none, lora or mms
    ship: AdapterShip = AdapterShip.merged  # what model/ holds
    r: int = 16  # lora: the rank of each low-rank update
    alpha: float = 32.0  # lora: updates are scaled by alpha / r
    dropout: float = 0.05  # lora: dropout on the input of each update
    # lora: the modules that get updates, by the end of their names (peft's target_modules, e.g. [q_proj, v_proj]);
    # null: the model family's attention and feed-forward projections
    target_modules: Optional[List[str]] = None
    attn_dim: int = 16  # mms: the adapter layers' bottleneck width (transformers' adapter_attn_dim; MMS's is 16)
    # mms: the language code the adapter is saved under (adapter.<language>.safetensors); null: dataset.language
    language: Optional[str] = None


# ---------------------------------------------------------------------------------------- conf/logger
class LoggerBackend(str, Enum):
    none = "none"  # console, train.log and metrics.jsonl only
    wandb = "wandb"  # plus Weights & Biases (WANDB_MODE=offline writes the run to disk only)
    tensorboard = "tensorboard"  # plus TensorBoard event files in the run dir (tensorboard/)
    mlflow = "mlflow"  # plus an MLflow run (a local store in the run dir unless a tracking server is named)


@dataclass
class LoggerConfig:
    """conf/logger: where metrics go besides the run dir's train.log and metrics.jsonl (speechkit/logger.py)."""

    backend: LoggerBackend = LoggerBackend.none  # where metrics go besides the run dir (logger=<option> sets it)
    project: str = "speechkit"  # wandb project, MLflow experiment
    entity: Optional[str] = None  # wandb: team or user; null: the API key's default
    name: Optional[str] = None  # run name; null: the run dir's name
    tags: List[str] = field(default_factory=list)  # wandb: the run's tags
    # mlflow: where runs go; null: MLFLOW_TRACKING_URI if set, else a local store in the run dir (mlflow.db)
    tracking_uri: Optional[str] = None


# ----------------------------------------------------------------------------------------- conf/paths
@dataclass
class PathsConfig:
    """conf/paths: where runs are written."""

    root: str = "outputs"  # run dirs go under it: <root>/<script>/<date>/<time>


# ------------------------------------------------------------------------------------------------ hub
@dataclass
class HubConfig:
    """The shipped model/ (with its README.md model card) uploaded to the Hugging Face Hub at the end of training.
    The token is huggingface_hub's own (HF_TOKEN, or `hf auth login`), never part of the config."""

    push: bool = False  # upload model/ at the end of training (needs repo_id)
    repo_id: Optional[str] = None  # e.g. my-org/wav2vec2-base-demo; created if it does not exist
    private: bool = True  # a new repo is private unless said otherwise
    revision: Optional[str] = None  # branch to commit to; null: main
    commit_message: str = "Upload model trained with speechkit"  # the upload's commit message


# ------------------------------------------------------------------------------ primary configs
@dataclass
class TrainConfig:
    """`python train.py`: the groups above composed into one run."""

    task: Any = MISSING  # one of the task schemas above (conf/task)
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    hw: HardwareConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # conf/augment: none unless chosen
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # conf/adapter: none unless chosen
    # More evaluation sets, each scored at every evaluation beside dataset.eval_split (its own lines in metrics.jsonl,
    # curves.png, report.html and the trackers): name -> a dataset option composed at that name, scored on its
    # eval_split, e.g. `+dataset@eval_sets.shifted=demo_en_shifted eval_sets.shifted.eval_split=test_noisy`
    eval_sets: Dict[str, DatasetConfig] = field(default_factory=dict)
    sagemaker: SageMakerConfig = field(default_factory=SageMakerConfig)  # with hw=sagemaker
    hub: HubConfig = field(default_factory=HubConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = "${hydra:runtime.output_dir}"  # where the run writes (Hydra's run dir: hydra.run.dir=...)


class Runtime(str, Enum):
    torch = "torch"  # the Hugging Face weights, in PyTorch
    onnx = "onnx"  # model/onnx/model.onnx (export.py), run by onnxruntime
    onnx_int8 = "onnx_int8"  # model/onnx/model.int8.onnx (export.py quantize=int8)


@dataclass
class RuntimeConfig:
    """What runs a saved model: PyTorch, or its ONNX export (served only as export.py's parity gate left it)."""

    runtime: Runtime = Runtime.torch  # what runs the model


@dataclass
class EvaluateConfig:
    """`python evaluate.py model_dir=... dataset=... split=...`: a saved model scored on one split of a data set;
    predictions.csv and report.html in its run dir."""

    model_dir: str = MISSING  # a run's model/ folder, or a Hub model id
    split: str = "test"  # the split of the data set scored
    # classifiers: score several labels per clip (mAP); null: as the model's config says (problem_type), or, where it
    # says nothing (the AST AudioSet checkpoint), as the data has it (a label column of lists)
    multi_label: Optional[bool] = None
    batch_size: int = 8  # clips per batch
    num_examples: int = 5  # rows of the reference/hypothesis table printed at the end
    # diarization models: the DER's collar (seconds) and whether overlapped speech is left unscored; null: as the
    # model was trained with (its task.collar_s / task.skip_overlap)
    collar_s: Optional[float] = None
    skip_overlap: Optional[bool] = None  # diarization: leave overlapped speech unscored; null: as trained
    # speech recognition: WER and CER after Whisper's English text normalizer too (task.whisper_normalizer), and the
    # hallucination probe's clips of silence and noise (task.hallucination_probe)
    whisper_normalizer: bool = False
    hallucination_probe: int = 0  # speech recognition: clips of silence and of noise added (0: none)
    inference: RuntimeConfig = field(default_factory=RuntimeConfig)  # inference.runtime=onnx: the ONNX export
    dataset: DatasetConfig = MISSING
    hw: HardwareConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = "${hydra:runtime.output_dir}"  # where predictions.csv and report.html go


# ---------------------------------------------------------------------------------------- export.py
class ExportFormat(str, Enum):
    onnx = "onnx"  # model/onnx/model.onnx, run by onnxruntime


class Quantize(str, Enum):
    none = "none"  # float32 weights
    int8 = "int8"  # dynamic int8 quantization of the linear layers (onnxruntime's quantize_dynamic)


@dataclass
class ExportConfig:
    """`python export.py model_dir=...`: the model in ONNX beside its weights, kept only if it scores as the PyTorch
    model does on the parity split."""

    model_dir: str = MISSING  # a run's model/ folder; the export goes into <model_dir>/onnx/
    format: ExportFormat = ExportFormat.onnx  # the export's format
    quantize: Quantize = Quantize.none  # the export's weights
    # The parity gate scores the exported model against the PyTorch one on this data set and split; null: the run's
    # own (its config.yaml beside model/, and its dataset.eval_split)
    dataset: Optional[DatasetConfig] = None
    split: Optional[str] = None  # the split the parity gate scores; null: the run's dataset.eval_split
    # The largest absolute WER difference accepted; null: 0.002 for float32, 0.02 for int8
    tolerance: Optional[float] = None
    batch_size: int = 8  # clips per batch of the parity gate's evaluation
    hw: HardwareConfig = field(default_factory=lambda: HardwareConfig(backend=Backend.cpu,
                                                                      mixed_precision=Precision.no))


class ResponseShape(str, Enum):
    details = "details"
    transcript = "transcript"


@dataclass
class InspectConfig:
    """`python inspect_data.py dataset=...`: a data set looked at before training."""

    task: Any = MISSING  # what is counted: asr the transcripts' characters, classification the labels ...
    dataset: DatasetConfig = MISSING
    sampling_rate: int = 16000  # the rate the model will train at: durations and the decoded cache follow it
    top_chars: int = 60  # rows of the character (or label) inventory printed (all of them go to the CSV)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = "${hydra:runtime.output_dir}"  # where summary.json and the rest go


@dataclass
class TranscribeConfig:
    """`python transcribe.py model_dir=... audio=...`: recordings of any length to text with word timestamps."""

    model_dir: str = MISSING  # a speech recognition model: a run's model/ folder, or a Hub model id
    audio: str = MISSING  # a file, a folder (searched recursively) or a glob
    output_dir: Optional[str] = None  # null: beside each input
    chunk_length_s: float = 20.0  # seconds of audio the model hears at once
    stride_length_s: float = 4.0  # of which context on each side, whose frames are dropped
    batch_size: int = 4  # windows per forward pass
    # Find speech first (silero-vad) and transcribe only its regions, merged up to chunk_length_s and batched;
    # timestamps are mapped back to the recording. false: every window of the recording, silences included
    vad: bool = False
    progress_bar: bool = True  # progress bars per file and over files
    inference: RuntimeConfig = field(default_factory=RuntimeConfig)  # inference.runtime=onnx: the ONNX export
    hw: HardwareConfig = MISSING


@dataclass
class DiarizeConfig:
    """`python diarize.py model_dir=... audio=...`: who spoke when in recordings of any length (RTTM), and with an ASR
    model who said what."""

    model_dir: str = MISSING  # a diarization model (train.py task=diarization)
    audio: str = MISSING  # a file, a folder (searched recursively) or a glob
    output_dir: Optional[str] = None  # null: beside each input
    asr_model_dir: Optional[str] = None  # a speech recognition model: each speaker's words, in text, JSON and SRT
    batch_size: int = 8  # windows per forward pass
    # Find speech first (silero-vad): turns are kept inside speech only, and the ASR model (asr_model_dir)
    # transcribes the speech regions alone (transcribe.py vad=true)
    vad: bool = False
    progress_bar: bool = True  # progress in seconds of audio
    hw: HardwareConfig = MISSING


@dataclass
class InferenceConfig(RuntimeConfig):
    """How the inference handler (speechkit/inference/, shipped as code/inference.py) treats requests, served or
    deployed, and what runs the model (runtime: torch, onnx, onnx_int8)."""

    max_body_mb: float = 6.0  # a larger request is refused (6 MB is SageMaker's real-time payload limit)
    # Longer audio is refused (413) from its sample count or header, before decoding: a few MB of FLAC or of JSON at
    # a low rate can be hours. 5 minutes is what wav2vec2-base transcribes on a CPU well inside SageMaker's 60 s
    # invocation limit; null: no limit.
    max_audio_s: Optional[float] = 300.0
    chunk_length_s: Optional[float] = 20.0  # audio longer than this is transcribed in overlapping chunks
    stride_length_s: Optional[float] = 4.0  # overlap on each side of a chunk; null: chunk_length_s / 6
    read_timeout_s: float = 30.0  # serve.py: a request whose body takes longer to arrive is answered 408
    threads: int = 2  # serve.py: requests transcribed at once (the others queue); more only grows memory
    # serve.py: requests that may wait for a thread; one more is answered 503 with Retry-After (the seconds the
    # queue ahead of it is expected to take), so a burst is told to come back rather than piling up without bound
    queue: int = 16
    # details: {"text", "duration_s", "chunked"}; transcript: the bare transcript as a JSON string, as the AWS
    # recipe's endpoint answers (for clients written against it).
    response: ResponseShape = ResponseShape.details


@dataclass
class EndpointConfig:
    """deploy.py: the SageMaker real-time endpoint created for the model."""

    name: Optional[str] = None  # null: speechkit-<timestamp>
    instance_type: str = "ml.g4dn.xlarge"  # one T4, as the AWS recipe
    instance_count: int = 1  # machines behind the endpoint
    image_uri: Optional[str] = None  # explicit inference image; null: the Hugging Face PyTorch image below
    transformers_version: str = "5.5.3"  # the Hugging Face inference image: its transformers version
    pytorch_version: str = "2.6.0"  # ... its PyTorch version
    py_version: str = "py312"  # ... its Python
    wait: bool = False  # wait until the endpoint is InService


@dataclass
class DeployConfig:
    """`python deploy.py model_dir=...`: a saved model packed, uploaded to S3 and deployed to a SageMaker endpoint."""

    model_dir: str = MISSING  # a run's model/ folder (or the job's model.tar.gz unpacked)
    hw: HardwareConfig = MISSING  # hw=sagemaker
    sagemaker: SageMakerConfig = field(default_factory=SageMakerConfig)  # region, role, bucket, prefix
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = "${hydra:runtime.output_dir}"  # where the packed model.tar.gz is kept


@dataclass
class ServeConfig:
    """`python serve.py model_dir=...`: the inference handler served over HTTP on this machine (SageMaker's /ping
    and /invocations)."""

    model_dir: str = MISSING  # a run's model/ folder: speech recognition or audio classification
    host: str = "127.0.0.1"  # the address listened on (0.0.0.0: every interface)
    port: int = 8080  # the TCP port (SageMaker's is 8080)
    device: Optional[str] = None  # null: cuda when available, else cpu
    inference: InferenceConfig = field(default_factory=InferenceConfig)


_SECRET_WORDS = ("token", "secret", "password", "passwd", "api_key", "apikey", "access_key", "credential",
                 "credentials")
# A key's last part holding one of those as a word of its own (hf_token, wandb_api_key, secret_access_key), not
# inside another word (max_new_tokens, tokenizer)
_SECRET_KEY = re.compile(r"(?:^|_)(?:%s)(?:$|_)" % "|".join(_SECRET_WORDS))
# Secrets by their shape, wherever they are typed: credentials in a URL (scheme://user:pass@host), a Hugging Face
# token, an AWS access key id, an AWS secret access key (40 characters of base64 with upper and lower case and
# digits that is not a path: no leading "/", at most three "/", no all-lowercase folder name between them).
_SECRET_SHAPES = re.compile(r"(?<=://)[^/@\s]+(?=@)|\bhf_[A-Za-z0-9]{20,}|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"
                            r"|(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")


def _is_secret_shape(found: str) -> bool:
    if len(found) != 40 or "://" in found:
        return True  # a URL's credentials, a token or a key id
    words = found.split("/")
    return not found.startswith("/") and len(words) <= 4 and all(
        any(test(c) for c in found) for test in (str.isupper, str.islower, str.isdigit)) and not any(
        len(w) >= 3 and w.isalpha() and w.islower() for w in words)  # a path's folder name: "train", "data"


REDACTED = "<redacted>"


def is_secret_key(key: str) -> bool:
    """A config key whose value must never be written out (tokens, passwords, API keys)."""
    return bool(_SECRET_KEY.search(str(key).lower().lstrip("+~").rsplit(".", 1)[-1]))


def redact(text: str) -> str:
    """`text` with every secret-looking part (by its shape, see _SECRET_SHAPES) replaced by <redacted>."""
    return _SECRET_SHAPES.sub(lambda m: REDACTED if _is_secret_shape(m.group()) else m.group(), text)


def redact_override(override: str) -> str:
    """A command-line override (`key=value`) as it may be written out: its value redacted by the key's name or by
    the value's shape."""
    key, eq, value = override.partition("=")
    if eq and is_secret_key(key) and value not in ("", "null"):
        return f"{key}={REDACTED}"
    return redact(override)


_ASSIGNMENT = re.compile(r"([\w.+~-]+)(=|: )(?!<redacted>|null\b|None\b|''|\"\")([^,\s'\"\]]+)")


def redact_text(text: str) -> str:
    """A written file's text (YAML, a command line, override lists) with secrets redacted: the value of every
    `key=value` or `key: value` whose key looks secret, and every secret-shaped value."""
    return redact(_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}" if is_secret_key(m.group(1))
                                  else m.group(0), text))


def public_config(cfg: DictConfig) -> dict:
    """The resolved config as plain data with any secret-looking value redacted (by key name and by value shape):
    what is saved and logged."""

    def scrub(node):
        if isinstance(node, dict):
            return {k: REDACTED if is_secret_key(k) and v not in (None, "") else scrub(v) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return redact(node) if isinstance(node, str) else node

    return scrub(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


class ConfigError(ValueError):
    """A config value that passed type checking but cannot work; the message names the key."""


class RunError(RuntimeError):
    """A run that cannot go on for a reason outside the config (a full disk); the message says what to do."""


def first_line(exc: BaseException, empty: Optional[str] = None, limit: int = 200) -> str:
    """An exception's message as one line fit for a one-line error: its first line, cut at `limit` characters;
    `empty` (default: the exception's type name) when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else (type(exc).__name__ if empty is None else empty)


def check_required(cfg: DictConfig) -> None:
    """Fail early, naming every required value that was left as ??? ."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            "Missing required config value(s): "
            + ", ".join(missing)
            + ". Set them on the command line, e.g. `" + missing[0] + "=...`."
        )
