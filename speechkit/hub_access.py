"""Before any work: can every Hugging Face Hub repo the config names be read from here?

A data set (`dataset.path`, with `dataset.source=hub`) and a checkpoint (`model.name_or_path`, or evaluate.py's
`model_dir`) that are not local folders come from the Hub. When one cannot be read, `datasets` and `transformers`
find out only after loading everything else and retrying for half a minute, and say so in a traceback. Here one
request per repo (the Hub's own access check, with a timeout) tells the cases apart, in one line naming the key:

- the Hub out of reach (no network, a proxy in the way): point the key at a local folder, or run with
  `HF_HUB_OFFLINE=1` on a filled cache; a repo already in the cache is used as it is, with that advice logged;
- no such repo (a mistyped id, or a private one without a token): a config error;
- a gated repo without access: accept its terms on its page, then `hf auth login` (or `HF_TOKEN`);
- a token the Hub refuses: `hf auth login` again;
- `HF_HUB_OFFLINE=1` and the repo not in this machine's cache.

A job launched on SageMaker (`hw=sagemaker`) reads the Hub from its own machine, so nothing is checked here.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

from omegaconf import DictConfig

from speechkit.config import ConfigError, RunError, first_line
from speechkit.validation import is_hub_id

log = logging.getLogger(__name__)
TIMEOUT_S = 10.0


def hub_repos(cfg: DictConfig) -> List[Tuple[str, str, str]]:
    """(key, repo id, repo type) of each Hub repo `cfg` reads; local folders and absent keys aside."""
    found = []
    dataset = cfg.get("dataset")
    if dataset is not None and _value(dataset.get("source")) == "hub" and dataset.get("path"):
        found.append(("dataset.path", str(dataset.path), "dataset"))
    model = cfg.get("model")
    if model is not None and model.get("name_or_path"):
        found.append(("model.name_or_path", str(model.name_or_path), "model"))
    if isinstance(cfg.get("model_dir"), str) and is_hub_id(cfg.model_dir):  # evaluate.py model_dir=<a Hub id>
        found.append(("model_dir", cfg.model_dir, "model"))
    return [(key, repo, kind) for key, repo, kind in found if not os.path.isdir(os.path.expanduser(repo))]


def check(cfg: DictConfig) -> None:
    """Refuse in one line (ConfigError: a repo that does not exist; RunError: the rest) when a Hub repo of `cfg`
    cannot be read from here."""
    hw = cfg.get("hw")
    if hw is not None and _value(hw.get("backend")) == "sagemaker":
        return
    for key, repo, kind in hub_repos(cfg):
        check_repo(key, repo, kind)


def _value(v) -> Optional[str]:
    return getattr(v, "value", v)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_repo(key: str, repo: str, kind: str) -> None:
    from huggingface_hub import constants, get_session
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ConfigError(f"{key}: '{repo}' is neither a local folder nor a Hub repo id (owner/name)") from None
    cached = in_cache(repo, kind)
    if _offline():
        if not cached:
            raise RunError(f"{key}: {repo} is not in this machine's Hugging Face cache ({constants.HF_HUB_CACHE}), "
                           "and HF_HUB_OFFLINE=1 keeps speechkit off the network: fill the cache once with the network "
                           f"on (same HF_HOME), or point {key} at a local folder")
        return
    url = f"{constants.ENDPOINT}/api/{kind}s/{repo}/auth-check"
    try:
        hf_raise_for_status(get_session().get(url, headers=build_hf_headers(), timeout=TIMEOUT_S))
    except GatedRepoError:
        raise RunError(f"{key}: {repo} is gated: accept its conditions on {constants.ENDPOINT}/"
                       f"{'datasets/' if kind == 'dataset' else ''}{repo} with your account, then `hf auth login` "
                       "(or set HF_TOKEN) on this machine") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{key}: no {kind} '{repo}' on the Hub ({constants.ENDPOINT}): check the id; a private repo "
                          "needs `hf auth login` (or HF_TOKEN)") from None
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status == 401:
            raise RunError(f"{key}: the Hub refused the token for {repo} (401): `hf auth login` again, or set "
                           "HF_TOKEN to a valid token") from None
        raise RunError(f"{key}: the Hub answered {status} for {repo}: try again later, or point {key} at a local "
                       "folder") from None
    except Exception as err:  # the network: DNS, refused or dropped connections, a proxy, a timeout
        why = f"{type(err).__name__}: {first_line(err, 'no answer', 160)}"
        proxy = next((f" through the proxy in {v}" for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                      if os.environ.get(v)), "")
        if cached:
            log.warning("%s: the Hub (%s) cannot be reached%s (%s): %s is read from this machine's cache; set "
                        "HF_HUB_OFFLINE=1 to skip the network", key, constants.ENDPOINT, proxy, why, repo)
            return
        raise RunError(f"{key}: the Hub ({constants.ENDPOINT}) cannot be reached{proxy} to read {repo} ({why}), and it "
                       f"is not in this machine's cache: point {key} at a local folder, or run with HF_HUB_OFFLINE=1 "
                       "after filling the cache where the network is on") from None


def in_cache(repo: str, kind: str) -> Optional[str]:
    """Where this machine's caches hold `repo` (the Hub's file cache, or for a data set also the `datasets` cache of
    its prepared tables), or None."""
    from huggingface_hub import constants

    folder = os.path.join(constants.HF_HUB_CACHE, f"{kind}s--{repo.replace('/', '--')}")
    if os.path.isdir(os.path.join(folder, "snapshots")) and os.listdir(os.path.join(folder, "snapshots")):
        return folder
    if kind == "dataset":
        datasets_cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(constants.HF_HOME, "datasets")
        prepared = os.path.join(datasets_cache, repo.replace("/", "___"))
        if os.path.isdir(prepared) and os.listdir(prepared):
            return prepared
    return None
