"""Choose a training recipe on the validation split, fast, on a GPU: a PyTorch stand-in.

MindSpore does not install on the lent GPU machine, so the recipes of the README were chosen
with this stand-in of mindtrans's `small` model (post-LN, sinusoidal positions, embeddings
scaled by sqrt(d_model), Xavier-uniform weights, N(0, d^-1/2) embeddings), trained as mindtrans
trains (Adam 0.9/0.98, label smoothing, global-norm clip 1, linear warm-up then linear decay to
0, the last epochs' weights averaged). Vocabularies, tokenized BLEU and sacreBLEU are
mindtrans's own code. Only the validation split is read; each configuration is then trained
for real with `mindtrans train` on the CPU and scored on test2016 once (record_run.py).

Batches hold about `tokens` real tokens per side: mindtrans packs `--batch-tokens 2048`
positions at ~95% fill, so tokens=1950 matches it. Prints one JSON object per configuration.

    python benchmarks/recipe_sweep.py --configs sweep.jsonl --parallel 16 --out results.json
    python benchmarks/recipe_sweep.py --config '{"vocab": "subword", "size": 10000, "steps": 4000}'
"""
import argparse
import json
import math
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:
    sys.exit("recipe_sweep.py trains a PyTorch stand-in: install PyTorch first (pip install torch; a GPU is faster)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mindtrans.data import BOS, EOS, PAD, load_split, tokenize  # noqa: E402 (these need no MindSpore)
from mindtrans.fetch import add_data_dir_argument  # noqa: E402
from mindtrans.files import atomic_write_text  # noqa: E402
from mindtrans.metrics import sacrebleu_score, tokenized_bleu  # noqa: E402
from mindtrans.subword import build_vocabs  # noqa: E402

warnings.filterwarnings("ignore", message=".*nested tensors is in prototype")  # nn.Transformer's eval fast path
DEFAULTS = dict(vocab="subword", size=8000, min_freq=2, d=256, heads=8, layers=3, d_ff=512, dropout=0.1, lr=1.5e-3,
                warmup=300, tokens=1950, steps=4400, label_smoothing=0.1, average=(1, 2, 3, 5), seed=0)


class Seq2Seq(nn.Module):
    """mindtrans's Transformer in PyTorch; one shared table (and output projection) when `shared`."""

    def __init__(self, src_size, tgt_size, c, shared, max_len=256):
        super().__init__()
        self.d = c["d"]
        self.src_embed = nn.Embedding(src_size, self.d)
        self.tgt_embed = self.src_embed if shared else nn.Embedding(tgt_size, self.d)
        for table in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(table.weight, std=self.d ** -0.5)
        self.out = None if shared else nn.Linear(self.d, tgt_size)
        self.out_bias = nn.Parameter(torch.zeros(tgt_size)) if shared else None
        position = torch.arange(max_len)[:, None] * torch.exp(torch.arange(0, self.d, 2) * (-math.log(1e4) / self.d))
        self.register_buffer("positions", torch.stack([position.sin(), position.cos()], -1).flatten(1))
        self.dropout = nn.Dropout(c["dropout"])
        self.transformer = nn.Transformer(self.d, c["heads"], c["layers"], c["layers"], c["d_ff"], c["dropout"],
                                          batch_first=True)  # its own init: Xavier uniform, as mindtrans

    def embed(self, ids, table):
        return self.dropout(table(ids) * math.sqrt(self.d) + self.positions[:ids.shape[1]])

    def encode(self, src):
        """(B, Ls) ids -> memory (B, Ls, d)."""
        return self.transformer.encoder(self.embed(src, self.src_embed), src_key_padding_mask=src == PAD)

    def decode(self, tgt, memory, src):
        """(B, Lt) ids, memory -> logits (B, Lt, |V_tgt|)."""
        causal = torch.ones(tgt.shape[1], tgt.shape[1], dtype=torch.bool, device=tgt.device).triu(1)
        hidden = self.transformer.decoder(self.embed(tgt, self.tgt_embed), memory, tgt_mask=causal,
                                          tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD)
        return self.out(hidden) if self.out is not None else hidden @ self.tgt_embed.weight.T + self.out_bias


def token_batches(pairs, tokens, rng):
    """Index lists of length-sorted pairs, about `tokens` real tokens per side each, in random order."""
    order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]) + 2 * rng.random(), len(pairs[i][1])))
    batches, batch, n_src, n_tgt = [], [], 0, 0
    for i in order:
        src, tgt = pairs[i]
        if batch and (n_src + len(src) > tokens or n_tgt + len(tgt) > tokens):
            batches.append(batch)
            batch, n_src, n_tgt = [], 0, 0
        batch, n_src, n_tgt = batch + [i], n_src + len(src), n_tgt + len(tgt)
    rng.shuffle(batches)
    return batches + [batch]


def padded(seqs, device):
    width = max(map(len, seqs))
    return torch.tensor([s + [PAD] * (width - len(s)) for s in seqs], device=device)


@torch.no_grad()
def greedy(model, sources, device, batch_size=512):
    """Greedy translations (id lists without <eos>) of encoded sources."""
    model.eval()
    outputs = [None] * len(sources)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        src = padded([sources[i] for i in rows], device)
        memory = model.encode(src)
        ys = torch.full((len(rows), 1), BOS, device=device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        for _ in range(src.shape[1] + 50):
            nxt = model.decode(ys, memory, src)[:, -1].argmax(-1).masked_fill(done, PAD)
            ys, done = torch.cat([ys, nxt[:, None]], 1), done | (nxt == EOS)
            if done.all():
                break
        for row, i in enumerate(rows):
            ids = ys[row, 1:].tolist()
            outputs[i] = ids[:ids.index(EOS)] if EOS in ids else ids
    model.train()
    return outputs


def learning_rate(step, c):
    """mindtrans.schedule.learning_rate's linear schedule: warm-up, then down to 0 at the last step."""
    s = step + 1
    return c["lr"] * min(s / c["warmup"], max(0.0, (c["steps"] - s) / max(1, c["steps"] - c["warmup"])))


def run(c, data_dir, device):
    """Train one configuration; its validation BLEU (greedy) for each number of averaged epochs."""
    torch.manual_seed(c["seed"])
    rng = random.Random(c["seed"])
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    src_vocab, tgt_vocab = build_vocabs(train, c["vocab"], c["min_freq"], c["size"])
    pairs = [(src_vocab.encode_text(s)[:126] + [EOS], [BOS] + tgt_vocab.encode_text(t)[:126] + [EOS])
             for s, t in train]
    model = Seq2Seq(len(src_vocab), len(tgt_vocab), c, shared=src_vocab is tgt_vocab).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=c["lr"], betas=(0.9, 0.98), eps=1e-9)
    step, epochs, snapshots, start = 0, 0, [], time.time()
    while step < c["steps"]:
        for batch in token_batches(pairs, c["tokens"], rng):
            if step == c["steps"]:
                break
            src, tgt = padded([pairs[i][0] for i in batch], device), padded([pairs[i][1] for i in batch], device)
            logits = model.decode(tgt[:, :-1], model.encode(src), src)
            loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD,
                                   label_smoothing=c["label_smoothing"])
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, c)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
        epochs += 1
        snapshots = (snapshots + [{k: v.detach().clone() for k, v in model.state_dict().items()}])[-max(c["average"]):]
    result = {"config": c, "epochs": epochs, "train_s": round(time.time() - start, 1)}
    sources = [src_vocab.encode_text(s)[:126] + [EOS] for s, _ in val]
    references = [t for _, t in val]
    reference_words = [tokenize(r) for r in references]  # as mindtrans.evaluate scores them
    for last in [n for n in c["average"] if n <= len(snapshots)]:
        model.load_state_dict({k: sum(s[k] for s in snapshots[-last:]) / last for k in snapshots[-1]})
        hypotheses = greedy(model, sources, device)
        result[f"val_greedy_average_last_{last}"] = {
            "bleu_tokenized": round(tokenized_bleu([tgt_vocab.words(h) for h in hypotheses], reference_words), 2),
            "sacrebleu": round(sacrebleu_score([tgt_vocab.decode_text(h) for h in hypotheses], references), 2)}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="one configuration: JSON overriding " + json.dumps(DEFAULTS))
    parser.add_argument("--configs", help="a file of configurations, one JSON object a line, run side by side")
    parser.add_argument("--parallel", type=int, default=8, help="configurations trained at once (one GPU)")
    add_data_dir_argument(parser)
    parser.add_argument("--out", help="write the results (a JSON list) here too")
    args = parser.parse_args()
    if bool(args.config) == bool(args.configs):
        parser.error("give --config or --configs")
    if args.config:
        config = {**DEFAULTS, **json.loads(args.config)}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.backends.cuda.matmul.allow_tf32 = True
        print(json.dumps(run(config, args.data_dir, device)), flush=True)
        return
    results = sweep([line for line in Path(args.configs).read_text().splitlines() if line.strip()],
                    args.parallel, args.data_dir)
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    failed = [r for r in results if "failed" in r]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(results)} configurations failed (see their output above)")


def last_json(output: str):
    """The JSON object on the last line of a child's output, or None (no output, or not JSON)."""
    lines = output.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return result if isinstance(result, dict) else None


def sweep(lines, parallel, data_dir):
    """Train the configurations (JSON lines) `parallel` at a time; one that fails (out of memory,
    say) is recorded as {"config": its line, "failed"} and the others go on."""
    results, running = [], []
    for line in lines + [None] * parallel:  # the padding drains the last ones
        if line is not None:
            running.append((line, subprocess.Popen([sys.executable, __file__, "--data-dir", data_dir,
                                                    "--config", line], stdout=subprocess.PIPE, text=True)))
        if len(running) == parallel or (line is None and running):
            line_run, child = running.pop(0)
            output, _ = child.communicate()
            result = last_json(output) if not child.returncode else None
            results.append(result or {"config": line_run, "failed": f"exit {child.returncode}, no result"})
            print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
