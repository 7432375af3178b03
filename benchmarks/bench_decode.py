"""Translation speed on test2016: batched cached greedy and beam search vs the naive decoder.

The naive baseline is how the original lesson decodes: one sentence at a time, running
the decoder over the whole prefix again at every step (no key/value cache). It is timed
on `--naive-sentences` sentences and extrapolated per sentence to the whole split.

    python benchmarks/bench_decode.py --bundle runs/small [--data-dir data]

Without a trained bundle an untrained `small` model is used and every sentence is
decoded to a fixed length (all decoders do the same number of steps), which still
measures the speed ratio fairly. Prints one JSON object.
"""
import argparse
import time

import numpy as np
from common import emit, multi30k_dir, peak_rss_gb
from mindtrans.fetch import add_data_dir_argument


def naive_greedy(model, src_ids, steps: int):
    """One sentence, no cache: re-decode the whole prefix for every new token."""
    import mindspore as ms

    from mindtrans.data import BOS, EOS

    memory, src_mask, _ = model.encode(ms.Tensor(np.array([src_ids], dtype=np.int32)))
    out = [BOS]
    for _ in range(steps):
        logits, _, _ = model.decode(ms.Tensor(np.array([out], dtype=np.int32)), memory, src_mask)
        token = int(logits[0, -1].asnumpy().argmax())
        if token == EOS:
            break
        out.append(token)
    return out[1:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="a trained run directory (default: an untrained 'small' model)")
    add_data_dir_argument(parser)
    parser.add_argument("--naive-sentences", type=int, default=20)
    parser.add_argument("--fixed-steps", type=int, default=25, help="output length without a trained bundle")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args()

    from mindtrans.bundle import load_bundle
    from mindtrans.config import TransformerConfig
    from mindtrans.data import load_split
    from mindtrans.decode import Translator
    from mindtrans.device import select_device
    from mindtrans.model import Transformer
    from mindtrans.data import build_vocabs

    device = select_device(verbose=False)
    data_dir = multi30k_dir(args.data_dir)
    sources = [s for s, _ in load_split(data_dir, "test2016")]
    if args.bundle:
        bundle = load_bundle(args.bundle)
        model, src_vocab, tgt_vocab, steps = bundle.model, bundle.src_vocab, bundle.tgt_vocab, None
    else:
        src_vocab, tgt_vocab = build_vocabs(load_split(data_dir, "train"), min_freq=2)
        model = Transformer(TransformerConfig.preset("small").with_vocab(len(src_vocab), len(tgt_vocab)))
        model.set_train(False)
        steps = args.fixed_steps
    translator = Translator(model, src_vocab, tgt_vocab, max_new_tokens=steps)
    report = {"device": device, "bundle": args.bundle or "untrained small, fixed length", "sentences": len(sources)}

    translator.translate_ids(sources[:8])  # warm-up
    for name, beam in (("greedy", 1), ("beam4", 4)):
        start = time.perf_counter()
        hyps = translator.translate_ids(sources, beam_size=beam)
        report[f"{name}_s"] = time.perf_counter() - start
        report[f"{name}_output_tokens"] = sum(len(h) for h in hyps)

    sample = sources[:args.naive_sentences]
    start = time.perf_counter()
    naive_tokens = 0
    for sentence in sample:
        limit = steps or min(len(translator.encode(sentence)) + 50, model.config.max_len - 1)
        naive_tokens += len(naive_greedy(model, translator.encode(sentence), limit))
    per_sentence = (time.perf_counter() - start) / len(sample)
    report.update(naive_sentences_timed=len(sample), naive_s_per_sentence=per_sentence,
                  naive_s_projected=per_sentence * len(sources),
                  greedy_speedup_vs_naive=per_sentence * len(sources) / report["greedy_s"],
                  peak_rss_gb=peak_rss_gb())
    emit(report, args.out)


if __name__ == "__main__":
    main()
