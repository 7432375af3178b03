"""The main job (`make demo`): fetch, train briefly, evaluate, translate, save a bundle."""
import time
from pathlib import Path

EXAMPLES = {
    "multi30k": ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.",
                 "Eine Frau in einem roten Kleid sitzt auf einer Bank."],
    "synthetic": ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.",
                  "Eine junge Frau trägt einen roten Hut."],
}


def run_demo(data_dir, out, mirrors=(), minutes: float = 3.0) -> dict:
    """Multi30k if a mirror answers, else the embedded synthetic corpus; says which."""
    from mindtrans.bundle import load_bundle
    from mindtrans.rundir import RunDir
    from mindtrans.evaluate import evaluate_bundle
    from mindtrans.fetch import FetchError, env_mirrors, fetch_multi30k
    from mindtrans.files import first_line
    from mindtrans.train_config import TrainConfig
    from mindtrans.training import train

    started = time.time()
    mirrors = list(mirrors) + env_mirrors()
    print("== 1/4 data")
    try:
        fetch_multi30k(data_dir, mirrors, timeout=5.0)
        corpus = "multi30k"
        print("using Multi30k (German-English, 29000 training pairs)")
    except FetchError as err:
        corpus = "synthetic"
        print(f"Multi30k is not reachable ({first_line(err)}); using the embedded synthetic corpus instead "
              f"(generated German-English captions, see mindtrans/corpus.py)")
    print(f"== 2/4 training the 'small' preset for at most {minutes:g} minutes")
    # Short sentences and a few minutes: smaller batches give more updates, a short warm-up uses them.
    cfg = TrainConfig(preset="small", corpus=corpus, epochs=100, max_minutes=minutes, batch_tokens=2048,
                      warmup_steps=60)
    summary = train(data_dir, out, cfg, overwrite=_holds_a_demo_run(RunDir(out), cfg))
    print("== 3/4 evaluating on the whole test split")
    bundle = load_bundle(out)
    scores = evaluate_bundle(bundle, data_dir, "test2016", corpus, beam_size=4)
    scores.pop("hypotheses")
    print(f"sacreBLEU {scores['sacrebleu']:.2f} (cased), BLEU {scores['bleu_tokenized']:.2f} (tokenized, lowercased), "
          f"perplexity {scores['ppl']:.2f}, {scores['sentences']} sentences with beam 4")
    print("== 4/4 translating")
    translator = bundle.translator()
    for source, target in zip(EXAMPLES[corpus], translator.translate(EXAMPLES[corpus], beam_size=4)):
        print(f"  {source}\n   -> {target}")
    RunDir(out).update_metadata({"test": scores})
    print(f"bundle saved in {Path(out).resolve()} (use it: mindtrans translate {out} \"Ein Hund rennt.\"); "
          f"{summary['steps']} steps, total {time.time() - started:.0f} s")
    return scores


def _holds_a_demo_run(run, cfg) -> bool:
    """True if `run` holds an earlier demo's run, which a new demo replaces (any other run is
    refused by train()). A demo run is one trained with the demo's configuration, any corpus."""
    try:
        saved = dict(run.train_info()["train"], corpus=cfg.corpus)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return saved == cfg.to_dict()
