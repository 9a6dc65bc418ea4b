"""Questions beyond the seeds: measured answers, not verdicts.

The seeds test their remedies on MLPs and LSTMs; these rows ask the same of a
transformer's feed-forward blocks (:mod:`.transformer_ffn`, whose own report lists the
same answers).  Each :class:`Question`
states what is asked and how it is measured, fixed in code before the run that answers
it; ``answer`` reads the step's ``metrics`` and returns the measured answer as text
(``unbottleneck reproduce`` lists them under "Beyond the seeds", apart from the claims'
met / not met counts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .common import fmt


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    method: str
    steps: tuple[str, ...]
    answer: Callable[..., str]


def _bottleneck(m: dict[str, Any]) -> str:
    base = m["summary"].get("mlp")
    if base is None:
        return "the mlp (GELU) variant is not in this run"
    parts = [f"block {row['block']}: IQR {row['effect']['iqr']['mean']:.3g}, std {row['effect']['std']['mean']:.3g}, "
             f"{row['effect']['share_beyond_0.05']['mean']:.1%} beyond 0.05" for row in base["layers"]]
    return "GELU effect " + "; ".join(parts)


def _iat_versus_relu(m: dict[str, Any]) -> str:
    s, relu, gelu = (m["summary"].get(v) for v in ("iat", "mlp-relu", "mlp"))
    if s is None or relu is None:
        return "iat or mlp-relu missing from this run"
    return (f"iat val ppl {fmt(s['val_ppl'], 3)} vs ReLU {fmt(relu['val_ppl'], 3)}"
            + (f" (GELU {fmt(gelu['val_ppl'], 3)})" if gelu else "")
            + f", lower in {s['val_lower_than_relu']}/{min(s['seeds'], relu['seeds'])} seeds")


def _versus_gelu(variant: str) -> Callable[[dict[str, Any]], str]:
    def answer(m: dict[str, Any]) -> str:
        s, base = m["summary"].get(variant), m["summary"].get("mlp")
        if s is None or base is None:
            return f"{variant} or mlp missing from this run"
        return (f"{variant} FFN val ppl {fmt(s['val_ppl'], 3)} vs GELU {fmt(base['val_ppl'], 3)} at "
                f"{s['params_vs_mlp']:+.2%} parameters ({s['params']:,}), {s['seeds']} seeds, lower in "
                f"{s['val_lower_than_mlp']}/{s['paired_seeds']}; test {fmt(s['test_ppl'], 3)} vs "
                f"{fmt(base['test_ppl'], 3)}; {fmt(s['time_vs_mlp'], 2)}x GELU's time per token")
    return answer


QUESTIONS: list[Question] = [
    Question("transformer-bottleneck", "Is a small transformer's GELU FFN bottlenecked in the seed's sense "
             "(activation effects concentrated near zero where pre-activations cluster)?",
             "trained char-level PTB GPT, BottleneckRecorder on validation text: per block, the GELU's "
             "effect spread (IQR, std) and share of |effect| > 0.05 (the seed's threshold)",
             ("transformer-ffn",), _bottleneck),
    Question("transformer-iat", "Does IAT-ReLU in the FFN (in place of GELU) lower validation perplexity at "
             "equal parameters?", "same data, optimiser, lr, batches and tokens; >= 2 seeds; mean ± std and "
             "per-seed comparison", ("transformer-ffn",), _versus_gelu("iat")),
    Question("transformer-iat-vs-relu", "Is IAT-ReLU's difference from GELU more than a plain ReLU's? "
             "(a control added after the first results were seen)", "the mlp block with ReLU (mlp-relu) at "
             "the same width and budget against iat", ("transformer-ffn",), _iat_versus_relu),
    Question("transformer-relu-control", "How far does a plain ReLU in the same block (the control for "
             "IAT-ReLU, added after the first results were seen) get against GELU?", "as above",
             ("transformer-ffn",), _versus_gelu("mlp-relu")),
    Question("transformer-adaptive", "Does an adaptive first FFN projection (SVA, policy on the block input) "
             "lower validation perplexity at equal parameters?", "as above", ("transformer-ffn",),
             _versus_gelu("adaptive")),
    Question("transformer-swiglu", "Where does the modern anchor (SwiGLU) stand at equal parameters?",
             "as above", ("transformer-ffn",), _versus_gelu("swiglu")),
]
