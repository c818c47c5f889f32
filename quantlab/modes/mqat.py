"""--mode mqat: modular QAT end to end. The module cube (--mode cube), the flow (by the
cube's ranking, or every order), the bit plan under each budget of `mqat.min_compression`,
staged QAT of every planned assignment in the flow (the best within each budget is that
budget's result: one point of T-A4 each), the baselines the tables
compare it with, then the tables. Everything runs as resumable child experiments, in four
parts that separate jobs may share (`--worker`): the cube, the exhaustive flow's orders,
the bit search's candidates (after both) and the baselines (beside them)."""
from __future__ import annotations

import itertools

from quantlab.engine.claims import Claimed, Jobs
from quantlab.engine.config import overlaid
from quantlab.engine.context import RunContext
from quantlab.errors import ConfigError
from quantlab.hawq.allocation import run_hawq
from quantlab.modes import WORKER, Child, Mode, publish, task_tables
from quantlab.mqat.cube import cube, cube_children, ledger
from quantlab.mqat.runner import FINETUNE, Candidate, StagedRuns, staged
from quantlab.mqat.search import bit_search, exhaustive_flow, model_size, plan_bits
from quantlab.mqat.tables import TABLES
from quantlab.quant.editing import pattern_of, quantizable_weights
from quantlab.quant.layers import FLOAT_BITS

PARTS = {"cube": (), "flow": (), "bits": ("cube", "flow"), "baselines": ()}


def module_weights(cfg: dict, task) -> tuple[dict[str, int], int]:
    """Weights each module would quantize (its quantizable layers outside
    `quantize.exclude`) and the count of every other parameter (kept float)."""
    model = task.build_network()
    layers = quantizable_weights(model, cfg["quantize"]["exclude"], task.patterns)
    counts = {}
    for module in task.groups:
        regex = pattern_of(module, task.patterns)
        counts[module] = sum(t.numel() for n, ts in layers.items() if regex.fullmatch(n) for t in ts)
    return counts, sum(p.numel() for p in model.parameters()) - sum(counts.values())


def run(ctx: RunContext) -> None:
    settings, modules = ctx.cfg["mqat"], list(ctx.task.groups)
    weights, rest = module_weights(ctx.cfg, ctx.task)
    float_size = model_size({m: FLOAT_BITS for m in modules}, weights, rest)
    lowest = float_size / model_size({m: min(settings["grid"]) for m in modules}, weights, rest)
    budgets = sorted(set(settings["min_compression"]))
    if not budgets or lowest < budgets[-1]:  # before any run: no assignment of the grid can fit
        raise ConfigError(f"config key 'mqat.min_compression': {budgets[-1] if budgets else 'no budget'}"
                          f"{'x' if budgets else ''} is out of reach (every module at {min(settings['grid'])} "
                          f"bits of mqat.grid gives {lowest:.2f}x)")
    StagedRuns(ctx)  # checks the stages' settings before any child runs
    jobs = Jobs(ctx, "mqat", tuple(PARTS))
    done = ledger(jobs, ctx)
    if jobs.stops_after("baselines"):
        baselines(ctx, done, weights, rest)
        return
    if jobs.stops_after("flow") and settings["flow"] != "exhaustive":
        return  # the ranking flow comes from the cube: no runs of its own
    if not jobs.stops_after("flow"):
        found = cube(ctx, done)
        if jobs.stops_after("cube"):
            return
    if settings["flow"] == "exhaustive":
        with jobs.part("flow"):
            order, flow_evidence = exhaustive_flow(modules, staged(ctx, done), settings["probe_bits"])
        if jobs.stops_after("flow"):
            return
    else:
        order, flow_evidence = found.ranking, [{"ranking": found.singles}]
    plans = {b: plan_bits(modules, settings["grid"], weights, rest, b, found, settings["tolerance"]) for b in budgets}
    ctx.logbook.write_json("mqat/flow.json", {"order": order, "mode": settings["flow"], "evidence": flow_evidence})
    ctx.logbook.write_json("mqat/bit_plan.json", {"budgets": [
        {"budget": b, "assignments": p.assignments, "full_grid": p.full_grid, "fixed": p.fixed}
        for b, p in plans.items()], "weights": weights, "rest": rest})
    for budget, plan in plans.items():
        ctx.say(f"flow {' -> '.join(order)}; bit search at >= {budget:g}x: {len(plan.assignments)} runs instead of "
                f"the full grid's {plan.full_grid} (pinned to the lowest bits: {plan.fixed or 'none'})")
    with jobs.part("bits"):
        searched = {b: bit_search(p, order, staged(ctx, done)) for b, p in plans.items()}
    if jobs.stops_after("bits"):
        return
    floats = done.entries[Candidate.of({m: FLOAT_BITS for m in modules}, None).key]
    points = []
    for budget, (bits, evidence) in searched.items():
        best = done.entries[Candidate.of(bits, order).key]
        points.append({"budget": budget, "bits": bits, "metric": best["metric"], "metrics": best.get("metrics", {}),
                       "evaluation": best.get("evaluation"), "experiment": best["experiment"],
                       "compression": float_size / model_size(bits, weights, rest), "candidates": evidence})
        ctx.say(f"MQAT at >= {budget:g}x: bits {', '.join(f'{m} {b}' for m, b in bits.items())}, flow "
                f"{' -> '.join(order)}: {ctx.task.best_metric} {best['metric']:.2f} (float {found.float_metric:.2f}) "
                f"at {points[-1]['compression']:.2f}x compression")
    ctx.logbook.write_json("mqat/result.json", {
        "order": order, "float_metric": found.float_metric, "float_metrics": floats.get("metrics", {}),
        "float_evaluation": floats.get("evaluation"), "points": points})
    baselines(ctx, done, weights, rest)
    publish(ctx, TABLES + task_tables(ctx, "mqat"))


def baselines(ctx: RunContext, done: Claimed, weights: dict[str, int], rest: int) -> dict:
    """What the tables compare MQAT with (`mqat.baselines`), each run once: the float
    model fine-tuned like a probe (what fine-tuning alone does), one module alone at each
    ablation bit-width, uniform QAT of every module per algorithm and bits, and HAWQ-V3
    at each budget of `mqat.baselines.hawq` (child `hawq-<budget>x`): the part `baselines`.
    `mqat/baselines.json`, once every run is in (a worker may see only some)."""
    with done.part("baselines"):
        out = _baselines(ctx, done, weights, rest)
    if not done.pending:
        ctx.logbook.write_json("mqat/baselines.json", out)
    return out


def _baselines(ctx: RunContext, done: Claimed, weights: dict[str, int], rest: int) -> dict:
    settings, modules = ctx.cfg["mqat"]["baselines"], list(ctx.task.groups)
    float_size = model_size({m: FLOAT_BITS for m in modules}, weights, rest)
    out: dict = {}
    module = settings["ablation_module"]
    if module is not None and settings["ablation_bits"]:
        if module not in modules:
            raise ConfigError(f"config key 'mqat.baselines.ablation_module': {module!r} is not one of {modules}")
        run_candidate = staged(ctx, done)
        rows = []
        for b in settings["ablation_bits"]:
            bits = {m: b if m == module else FLOAT_BITS for m in modules}
            found = run_candidate(bits, None)
            rows.append({"bits": b, "metric": found["metric"], "evaluation": found.get("evaluation"),
                         "compression": float_size / model_size(bits, weights, rest)})
        out["ablation"] = {"module": module, "rows": rows}
    if settings["float_finetune"]:
        found = staged(ctx, done, FINETUNE)({m: FLOAT_BITS for m in modules}, None)
        out["float_finetune"], out["float_finetune_evaluation"] = found["metric"], found.get("evaluation")
    epochs = ctx.cfg["mqat"]["stage_epochs"] * len(modules)
    out["uniform"] = []
    for algorithm in settings["uniform_algorithms"]:
        run_uniform = staged(ctx, done, algorithm, epochs)
        for b in settings["uniform_bits"]:
            bits = {m: b for m in modules}
            found = run_uniform(bits, None)
            out["uniform"].append({"algorithm": algorithm, "bits": b, "metric": found["metric"],
                                   "evaluation": found.get("evaluation"),
                                   "compression": float_size / model_size(bits, weights, rest)})
    out["hawq"] = []
    for budget in settings["hawq"]:
        name = f"hawq-{budget:g}x"
        cfg = overlaid(ctx.cfg, {"hawq": {"min_compression": budget}})
        hawq = done.obtain(name, lambda: {k: v for k, v in run_hawq(ctx.child(name, cfg)).items() if k in (
            "metric", "compression", "bits", "experiment", "evaluation", "trace_note")})
        if hawq is not None:
            out["hawq"].append({"budget": budget, **hawq})
    return out


def mqat_children(cfg: dict, task) -> list[Child]:
    """The cube, the exhaustive flow's orders, the bit search's candidates (all that the
    budget admits before the cube pins any module: an upper bound) and the baselines."""
    settings, base, modules = cfg["mqat"], cfg["mqat"]["baselines"], list(task.groups)
    epochs = settings["stage_epochs"]
    children = cube_children(cfg, task)
    if settings["flow"] == "exhaustive":
        children += [Child("flow", ">".join(o), epochs * len(o)) for o in itertools.permutations(modules)]
    weights, rest = module_weights(cfg, task)
    candidates = {"-".join(str(b[m]) for m in modules): b for budget in sorted(set(settings["min_compression"]))
                  for b in plan_bits(modules, settings["grid"], weights, rest, budget).assignments}
    children += [Child("bits", name, epochs * sum(b[m] != FLOAT_BITS for m in modules))
                 for name, b in candidates.items()]
    if base["ablation_module"] is not None:
        children += [Child("baselines", f"{base['ablation_module']}@{b}", epochs) for b in base["ablation_bits"]]
    if base["float_finetune"]:
        children.append(Child("baselines", "float fine-tuned", epochs, quantized=False))
    children += [Child("baselines", f"{a} uniform {b}", epochs * len(modules))
                 for a in base["uniform_algorithms"] for b in base["uniform_bits"]]
    children += [Child("baselines", f"hawq-{b:g}x", cfg["hawq"]["epochs"]) for b in base["hawq"]]
    return children


MODE = Mode("mqat", "modular QAT: cube, flow, bit search, staged QAT, baselines and the MQAT tables", run,
            section="mqat", tables=TABLES, trains=True, children=True, needs_start=True, options=(WORKER,),
            parts=PARTS, plan=mqat_children)
