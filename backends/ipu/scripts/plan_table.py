"""Print the planner's default plan for tiny/base/small/medium/large-v3 at 2/4/8/16 IPUs (a Markdown table).

Usage: PYTHONPATH=src:backends/ipu/src python backends/ipu/scripts/plan_table.py
Each cell is what ``whisper-tune plan --backend ipu --ipus N --model M`` plans (the planner's defaults).
"""

from __future__ import annotations

from whisper_tune_ipu.models import resolve_model
from whisper_tune_ipu.planner import PlanError, PlanRequest, plan_ipu

MODELS = ("tiny", "base", "small", "medium", "large-v3")
IPUS = (2, 4, 8, 16)


def cell(model: str, ipus: int) -> str:
    try:
        plan = plan_ipu(resolve_model(model), PlanRequest(ipus=ipus))
    except PlanError as exc:
        needs = exc.message.split(" is planned as a ")[-1].split(" pipeline")[0]
        return (
            f"refused: too few IPUs (needs a {needs} pipeline)" if "too few" in exc.message else exc.message
        )
    k = plan.inference_encoder_ipus
    gen = f"{list(plan.inference_layers_per_ipu[:k])}+{list(plan.inference_layers_per_ipu[k:])}"
    return (
        f"`{list(plan.layers_per_ipu)}` x{plan.replication_factor}, "
        f"GA>={plan.min_gradient_accumulation_steps}, "
        f"gen `{gen}`, {plan.source}"
    )


def main() -> None:
    print("| model | " + " | ".join(f"{n} IPUs" for n in IPUS) + " |")
    print("|---" * (len(IPUS) + 1) + "|")
    for model in MODELS:
        print(f"| {model} | " + " | ".join(cell(model, n) for n in IPUS) + " |")


if __name__ == "__main__":
    main()
