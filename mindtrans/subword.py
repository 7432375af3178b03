"""A joint subword vocabulary: SentencePiece (Kudo & Richardson, 2018) on raw, cased text.

A word-level vocabulary lowercases and turns every unseen word into ``<unk>``; a subword
one splits an unseen word ("Fahrradhelmverkäufer") into pieces it knows, keeps the case,
and decodes back to ordinary text. One model is trained on both sides of the training split
(German and English share many names and numbers), so source, target and output projection
can share one embedding table (``TransformerConfig.share_embeddings``).

The model is the ``sentencepiece`` package's: it trains in seconds, decodes pieces back to
text (MindSpore's ``dataset.text.SentencePieceTokenizer`` only encodes, inside a dataset
pipeline) and its model file is the same everywhere. It is stored inside the vocabulary JSON
file (base64), so a bundle keeps its usual four files.
"""
import base64
import io
import json
import re

from mindtrans.data import BOS, EOS, PAD, SPECIALS, UNK, Vocab, tokenize
from mindtrans.files import atomic_write_text, first_line

FORMAT = "mindtrans.subword"


class SubwordVocab:
    """Text <-> ids through a SentencePiece model whose first four ids are ``SPECIALS``."""

    def __init__(self, model_proto: bytes):
        import sentencepiece

        self.model_proto = bytes(model_proto)
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        specials = tuple(self.processor.id_to_piece(i) for i in range(len(SPECIALS)))
        if specials != SPECIALS:
            raise ValueError(f"a subword model must start with {SPECIALS}, got {specials}")

    @classmethod
    def train(cls, texts, size: int = 8000) -> "SubwordVocab":
        """Train on an iterable of raw sentences (both languages); `size` pieces, specials included."""
        import sentencepiece

        model = io.BytesIO()
        try:  # byte_fallback: a character never seen in training becomes its UTF-8 bytes, not <unk>
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(list(texts)), model_writer=model, vocab_size=size, model_type="bpe",
                character_coverage=1.0, byte_fallback=True, unk_id=UNK, pad_id=PAD, bos_id=BOS, eos_id=EOS,
                unk_piece=SPECIALS[UNK], pad_piece=SPECIALS[PAD], bos_piece=SPECIALS[BOS], eos_piece=SPECIALS[EOS],
                num_threads=1, minloglevel=2)  # one thread: the same pieces on every run
        except RuntimeError as err:
            needed = re.search(r"(\d+) vs (\d+)", str(err))
            if needed:
                raise ValueError(f"a subword vocabulary of {size} pieces is too small for this corpus: its "
                                 f"characters, 256 bytes and the specials need {needed.group(2)} "
                                 f"(raise --subword-size)") from None
            at_most = re.search(r"value <= (\d+)", str(err))
            if at_most:
                raise ValueError(f"a subword vocabulary of {size} pieces is more than this corpus can make (at most "
                                 f"{at_most.group(1)}): lower --subword-size") from None
            raise ValueError(f"cannot train the subword vocabulary: {first_line(err)}") from None
        return cls(model.getvalue())

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    def __repr__(self) -> str:
        return f"SubwordVocab(size={len(self)})"

    def encode_text(self, text: str) -> list:
        """A raw sentence -> piece ids (no <bos>/<eos>)."""
        return self.processor.encode(text)

    def decode_text(self, ids) -> str:
        """Ids -> the sentence, up to the first <eos>, without <pad>/<bos>."""
        ids = [int(i) for i in ids]
        if EOS in ids:
            ids = ids[:ids.index(EOS)]
        return self.processor.decode([i for i in ids if i not in (PAD, BOS)])

    def words(self, ids) -> list:
        """Ids -> the lowercased word tokens that tokenized BLEU compares."""
        return tokenize(self.decode_text(ids))

    def pieces(self, text: str) -> list:
        """The pieces of `text`, for reading: "▁Fahr", "rad", ..."""
        return self.processor.encode(text, out_type=str)

    def save(self, path) -> None:
        payload = {"format": FORMAT, "version": 1, "size": len(self),
                   "sentencepiece_model": base64.b64encode(self.model_proto).decode("ascii")}
        atomic_write_text(path, json.dumps(payload) + "\n")

    @classmethod
    def from_payload(cls, payload: dict, path) -> "SubwordVocab":
        """The vocabulary a JSON object written by `save` holds; ValueError naming `path` otherwise."""
        try:
            vocab = cls(base64.b64decode(payload["sentencepiece_model"], validate=True))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path} does not hold a valid SentencePiece model: {err}") from None
        if payload.get("size") != len(vocab):
            raise ValueError(f"{path} says size {payload.get('size')} but its model has {len(vocab)} pieces")
        return vocab


def is_subword_file(path) -> bool:
    """Whether `path` is a vocabulary file that holds a SentencePiece model."""
    from pathlib import Path

    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_vocab(path):
    """A vocabulary file of either kind: `SubwordVocab` or word-level `Vocab`."""
    from pathlib import Path

    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a mindtrans vocabulary file: {err}") from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return SubwordVocab.from_payload(payload, path)
    return Vocab.load(path)


def build_vocabs(train_pairs, kind: str = "word", min_freq: int = 2, size: int = 8000) -> tuple:
    """(source, target) vocabularies from the training pairs only: word-level ones per side,
    or one joint subword model for both (the same object twice)."""
    if kind == "word":
        from mindtrans.data import build_vocabs as word_vocabs

        return word_vocabs(train_pairs, min_freq)
    joint = SubwordVocab.train([s for s, _ in train_pairs] + [t for _, t in train_pairs], size)
    return joint, joint

