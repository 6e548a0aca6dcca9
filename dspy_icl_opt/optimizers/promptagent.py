"""PromptAgent: "Strategic Planning with Language Models Enables Expert-level Prompt Optimization" (Wang et al., 2024).

Prompt optimization as planning: a Monte Carlo tree search whose states are prompts. An action on a
node runs its prompt on a batch of training examples, asks the prompt model why the prompt failed
on the wrong answers (the error analysis, a textual "gradient"), and asks it for a new prompt that
fixes them, shown the chain of prompts the node descends from. A child's reward is its accuracy on a
fixed evaluation split, so siblings are compared on the same examples (and the scorer's cache makes
every pair cost one call). Each iteration selects a leaf by UCT, expands it, simulates greedily down
the best-reward children to the depth limit (or an early stop), and backs the path's cumulative
rewards up. The paper returns the best node of the path with the highest mean reward; here that
node and the next best by reward (``final_candidates`` in all, 2 by default as in the other strategies)
then compete with the start on the valset, as every strategy's final choice does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

import dspy

from dspy_icl_opt._log import logger
from dspy_icl_opt._validation import check_int, check_number
from dspy_icl_opt.optimizers.promptagent_prompts import (
    AnalyzeErrors,
    RewriteInstruction,
    WrongAnswer,
    is_wrong,
    parse_reasons,
    render_versions,
    render_wrong_answers,
    usable_instruction,
)
from dspy_icl_opt.search.base import ICLOptimizer, SearchContext, stable_int
from dspy_icl_opt.search.grounding import data_summary, format_instruction, output_spaces
from dspy_icl_opt.search.plan import (
    MIN_SEARCH_EXAMPLES,
    Phase,
    SearchPlan,
    Shape,
    plan_validation,
    search_subset,
    validation_calls,
)
from dspy_icl_opt.search.proposals import clean_proposal
from dspy_icl_opt.search.report import CandidateRecord
from dspy_icl_opt.search.scorer import Metric
from dspy_icl_opt.search.surgery import ProgramState, describe_signature

#: The score label of a node's reward (its mean on the fixed evaluation split).
REWARD_LABEL = "reward"
#: The prompt model's sampling temperature (the rewrites should differ between siblings).
DEFAULT_TEMPERATURE = 0.7
#: The fewest MCTS iterations a capped plan aims for (one iteration is a single greedy path, not a search).
MIN_ITERATIONS = 3
#: Iterations without a task cap when ``iterations`` is left to the plan (the paper runs 10 to 12).
UNCAPPED_ITERATIONS = 12
#: The plan lowers the depth limit to this before it lowers ``expand_width`` (depth is what MCTS plans over).
PREFERRED_DEPTH = 3
#: The shallowest depth limit the plan sets (a tree one level deep is a random sample, not a plan).
MIN_PLANNED_DEPTH = 2
#: Prompt-model calls per child: the error analysis and the rewrite.
PROMPT_CALLS_PER_CHILD = 2
#: Iterations in a row that add no node before the search stops (a fully explored or silent tree). One that
#: selects a fully expanded path makes no LM call; one that expands a leaf whose rewrites come back unusable or
#: repeated spends prompt calls (and task calls on its batch), which the caps bound. Each backup lowers the
#: exploration bonus of the path it took.
MAX_IDLE_ITERATIONS = 10
#: Integer settings: (minimum, the paper's default quoted in error messages).
_INT_SETTINGS = {"expand_width": (1, 3), "depth_limit": (1, 5), "min_depth": (0, 2), "batch_size": (1, 5),
                 "eval_size": (1, 50), "n_reasons": (1, 3), "final_candidates": (1, 1),
                 "max_instruction_chars": (1, 1000)}


@dataclass
class _Node:
    """A prompt in the tree: its candidate record, its reward and the search statistics."""

    record: CandidateRecord
    parent: _Node | None
    depth: int
    reward: float = 0.0
    children: list[_Node] = field(default_factory=list)
    cum_rewards: list[float] = field(default_factory=list)
    visits: int = 0
    expansions: int = 0
    terminal: bool = False

    @property
    def id(self) -> int:
        return self.record.id

    @property
    def q(self) -> float:
        """The mean cumulative reward backed up through the node (its own reward before any backup)."""
        return sum(self.cum_rewards) / len(self.cum_rewards) if self.cum_rewards else self.reward


@dataclass
class _Run:
    """What one compile() call tracks; the optimizer object holds settings only."""

    names: list[str]
    tasks: dict[str, str]
    summaries: dict[str, str]
    eval_indices: list[int]
    width: int
    depth_limit: int
    nodes: dict[int, _Node] = field(default_factory=dict)
    root: _Node | None = None
    threshold: float = 0.0  # the best reward met by a simulation so far (the early stop's bar)
    paths: list[list[int]] = field(default_factory=list)
    iteration: int = 0
    out_of_budget: bool = False
    duplicates: int = 0
    deepened: int = 0  # levels added to the plan's depth limit (see PromptAgent._deepen)


class PromptAgent(ICLOptimizer):
    """PromptAgent: Monte Carlo tree search over prompts, expanded by error analysis and rewrites.

    The tree's root is the program as given. Expanding a node makes ``expand_width`` children; for
    each, ``batch_size`` training examples are drawn (seeded by the node and the child), the node's
    program runs on them, and its wrong answers (an answer the task model wrote in an unreadable
    format is shown as its raw text) go to two meta-prompts: the error analysis (``n_reasons``
    reasons) and the rewrite, which also sees the instructions of the node's ancestors. A batch
    without a wrong answer falls back on the node's known wrong answers on the evaluation split
    (free: they are cached). The new instruction's reward is its mean score on the evaluation split,
    ``eval_size`` training examples drawn once per run. The root's first expansion also gets the
    data-grounded format candidate (the start plus a sentence naming the answer space, no LM call).

    One iteration: select from the root by UCT, ``Q + w_exp * sqrt(ln(N_parent + 1) / n)`` (Q the
    mean backed-up cumulative reward, n the node's backups), down to a leaf; expand it unless it is
    terminal; simulate by expanding and following the best-reward child until a node is terminal
    (at ``depth_limit``, or deeper than ``min_depth`` with a reward below the mean of the root's and
    its parent's) or stops early (deeper than ``min_depth`` with the best reward seen); back up, to
    every node of the path, the sum of the rewards from it to the path's end. After the iterations,
    the path with the highest mean reward is taken and its best-reward node is the paper's answer;
    it and the next best nodes by reward (``final_candidates`` in all) are validated against the
    start on ``valset``, and the start is kept unless one is surely better (see ``ICLOptimizer``).

    Several predictors: each child rewrites one predictor's instruction, in turn along the depth, and the
    siblings of one expansion start from different predictors (child ``k`` of a node at depth ``d`` rewrites
    predictor ``(d + k) mod m``).

    The budget: each child costs 2 prompt calls (plus retries of unusable answers) and, in task
    calls, its reward (``eval_size`` per predictor) plus the batch examples the parent had not run.
    With caps, the plan lowers the depth limit, then ``expand_width``, then the evaluation split,
    until ``MIN_ITERATIONS`` iterations fit; with ``iterations=None`` the search then goes on while
    the budget pays for another child.

    Args:
        metric: ``metric(example, prediction, trace=None)`` -> bool or float; 1.0 is a perfect answer.
        prompt_model: writes the error analyses and rewrites (default: the task model).
        task_model: runs the program (default: ``dspy.settings.lm``).
        iterations: MCTS iterations (None: as the budget allows; 12 without a task cap).
        expand_width: children per expansion (3).
        depth_limit: the deepest a node may be (5; the paper uses 5 to 8).
        min_depth: early stops and low-reward terminals only below this depth (2).
        w_exp: UCT's exploration weight (2.5).
        batch_size: training examples run per child to find wrong answers (5).
        eval_size: examples of the evaluation split that gives the rewards (50, at most the trainset).
        n_reasons: reasons asked of the error analysis (3).
        final_candidates: nodes validated against the start (2: the paper's choice and the best other node by
            reward, as the other strategies validate two finalists; 1: the paper's choice only). On the AVX2
            benchmark rows with 1, the paper's choice was the node of best reward in 8 of 12 cells; in 3 it
            was the format candidate, which scored as the start did on validation.
        temperature: the prompt model's sampling temperature; ``None`` (default): the prompt LM's own
            temperature when it was built with one, else 0.7.
        format_candidate: add the data-grounded format candidate to the root's first expansion.
        max_instruction_chars: longer rewrites are dropped (1000).
        **kwargs: ``budget``, ``seed``, ``num_threads``, ``log_dir``, ``failure_score``, ``max_retries``,
            ``progress`` (see :class:`~dspy_icl_opt.search.ICLOptimizer`).

    Example:
        >>> from dspy_icl_opt.optimizers.promptagent import PromptAgent
        >>> from dspy_icl_opt.testing import format_chat_reply, planted_rule_task, scripted_lm, system_text
        >>> task = planted_rule_task("vowels", train_size=8, val_size=4)
        >>> def reply(request):  # stands in for a real LM, e.g. dspy.LM("openai/gpt-4o-mini")
        ...     if "`new_instruction`" in system_text(request):
        ...         return format_chat_reply({"new_instruction": "Count the vowels in the word."})
        ...     return format_chat_reply({"reasons": "1. It never says what to do with the word."})
        >>> agent = PromptAgent(task.metric, prompt_model=scripted_lm(reply), task_model=task.lm(), iterations=2,
        ...                     expand_width=1, depth_limit=2, batch_size=4, eval_size=8, progress=False)
        >>> program = agent.compile(task.program(), trainset=task.train, valset=task.val)
        >>> program.signature.instructions
        'Count the vowels in the word.'
    """

    default_temperature = DEFAULT_TEMPERATURE

    def __init__(self, metric: Metric, *, prompt_model: dspy.BaseLM | None = None,
                 task_model: dspy.BaseLM | None = None, iterations: int | None = None, expand_width: int = 3,
                 depth_limit: int = 5, min_depth: int = 2, w_exp: float = 2.5, batch_size: int = 5,
                 eval_size: int = 50, n_reasons: int = 3, final_candidates: int = 2,
                 temperature: float | None = None, format_candidate: bool = True,
                 max_instruction_chars: int = 1000, **kwargs: Any) -> None:
        super().__init__(metric, task_model=task_model, prompt_model=prompt_model, **kwargs)
        settings = {"expand_width": expand_width, "depth_limit": depth_limit, "min_depth": min_depth,
                    "batch_size": batch_size, "eval_size": eval_size, "n_reasons": n_reasons,
                    "final_candidates": final_candidates, "max_instruction_chars": max_instruction_chars}
        for name, value in settings.items():
            minimum, default = _INT_SETTINGS[name]
            setattr(self, name, check_int(name, value, minimum=minimum, hint=f"The paper's default is {default}."))
        if iterations is not None:
            check_int("iterations", iterations, minimum=1,
                      hint="Or pass iterations=None to run as many as the budget pays for.")
        if not isinstance(format_candidate, bool):
            raise TypeError(f"`format_candidate` must be True or False, but got {format_candidate!r}.")
        self.iterations = iterations
        self.w_exp = float(check_number("w_exp", w_exp, minimum=0, hint="The paper's default is 2.5."))
        if temperature is not None:
            check_number("temperature", temperature, minimum=0, hint="Try 0.7, or None for the prompt LM's own.")
        self.temperature = None if temperature is None else float(temperature)
        self.format_candidate = format_candidate

    def _params(self) -> dict[str, Any]:
        keys = ["iterations", *_INT_SETTINGS, "w_exp", "temperature", "format_candidate"]
        return {key: getattr(self, key) for key in keys}

    # -------------------------------------------------------------------------------- the plan
    def _plan(self, shape: Shape) -> SearchPlan:
        """Evaluation split, width and depth limit such that ``MIN_ITERATIONS`` iterations fit the caps.

        A child costs ``2`` prompt calls and about ``eval + batch * (1 - eval / n_train)`` task calls per
        predictor (the parent's pairs on the evaluation split are cached). The first iteration grows one
        path to the depth limit (``depth * width`` children); each later one about ``(depth - 1) * width``.
        """
        finalists, n_val, notes = plan_validation(shape, self.final_candidates)
        held = validation_calls(shape, finalists, n_val)
        search = None if shape.task_cap is None else max(0, shape.task_cap - held)
        wanted = self.iterations or (UNCAPPED_ITERATIONS if search is None else MIN_ITERATIONS)
        best = None
        for size, width, depth in self._shapes(shape.n_train):
            projection = self._project(shape, search, size, width, depth, wanted)
            # more iterations win; when none fits a whole iteration, the shape that projects the fewest calls
            # (the start's reward on a smaller split), so the plan stays within the cap where any shape can
            if best is None or projection[0] > best[0][0] or (
                    projection[0] == 0 == best[0][0] and _projected(projection) < _projected(best[0])):
                best = (projection, size, width, depth)
            if projection[0] >= wanted:
                best = (projection, size, width, depth)
                break
        (iterations, children, fixed, per_child), size, width, depth = best
        if self.iterations is not None and iterations > self.iterations:
            iterations = self.iterations
            children = depth * width + (iterations - 1) * max(1, (depth - 1) * width)
        if iterations < wanted:
            notes.append(f"only {iterations} iteration(s) fit the caps; {wanted} wanted")
        if (width, depth) != (self.expand_width, self.depth_limit):
            notes.append(f"expand_width {self.expand_width} -> {width}, depth_limit {self.depth_limit} -> {depth}")
        first = "the start and the format candidate" if self.format_candidate else "the start"
        phases = [Phase(f"{first}: rewards", fixed),
                  Phase(f"iterations 1-{iterations}: about {children} children ({width} per expansion)",
                        children * per_child, children * PROMPT_CALLS_PER_CHILD),
                  Phase(f"final validation: start + {finalists} node(s)", held)]
        settings = {"eval_size": size, "expand_width": width, "depth_limit": depth,
                    "batch_size": min(self.batch_size, shape.n_train), "children": children,
                    "finalists": finalists, "validation_examples": n_val}
        return SearchPlan("PromptAgent", shape, int(iterations), settings, phases, notes)

    def _shapes(self, n_train: int) -> list[tuple[int, int, int]]:
        """``(eval_size, width, depth)`` in the order the plan tries them: the depth limit shrinks first (to
        ``PREFERRED_DEPTH``), then the width (to 2), then the evaluation split, then depth (to
        ``MIN_PLANNED_DEPTH``) and width further."""
        top = min(self.eval_size, n_train)
        sizes = list(range(top, min(top, MIN_SEARCH_EXAMPLES) - 1, -1))
        floor = min(self.depth_limit, max(PREFERRED_DEPTH, self.min_depth + 1))
        depths = list(range(self.depth_limit, floor - 1, -1))
        widths = list(range(self.expand_width, min(self.expand_width, 2) - 1, -1))
        preferred = [(s, w, d) for s in sizes for w in widths for d in depths]
        last = [(s, w, d) for s in sizes for w in range(self.expand_width, 0, -1)
                for d in range(self.depth_limit, min(self.depth_limit, MIN_PLANNED_DEPTH) - 1, -1)]
        return list(dict.fromkeys(preferred + last))

    def _project(self, shape: Shape, search: int | None, size: int, width: int, depth: int,
                 wanted: int) -> tuple[int, int, int, int]:
        """``(iterations, children, fixed task calls, task calls per child)`` for one shape of the tree."""
        m = shape.n_predictors
        batch = min(self.batch_size, shape.n_train)
        per_child = (size + math.ceil(batch * (shape.n_train - size) / max(1, shape.n_train))) * m
        fixed = size * m * (2 if self.format_candidate else 1)
        by_task = None if search is None else max(0, search - fixed) // per_child
        by_prompt = None if shape.prompt_cap is None else shape.prompt_cap // PROMPT_CALLS_PER_CHILD
        first, later = depth * width, max(1, (depth - 1) * width)
        if by_task is None and by_prompt is None:
            return wanted, first + (wanted - 1) * later, fixed, per_child
        children = min(c for c in (by_task, by_prompt) if c is not None)
        iterations = 0 if children < first else 1 + (children - first) // later
        return iterations, children, fixed, per_child

    # -------------------------------------------------------------------------------- the search
    def _search(self, ctx: SearchContext) -> None:
        plan = ctx.plan
        run = _Run(names=[name for name, _ in ctx.predictors],
                   tasks={name: describe_signature(p) for name, p in ctx.predictors},
                   summaries={name: data_summary(p, ctx.trainset) for name, p in ctx.predictors},
                   eval_indices=search_subset(len(ctx.trainset), plan.settings["eval_size"], self.seed),
                   width=plan.settings["expand_width"], depth_limit=plan.settings["depth_limit"])
        seed = ctx.add_candidate(ctx.initial_state, step=0, origin="seed")
        ctx.set_best(seed)
        run.root = run.nodes[seed.id] = _Node(seed, None, 0)
        with ctx.search_phase(validation_calls=plan.held_back):
            try:
                run.root.reward = self._reward(ctx, run, seed)
                run.threshold = run.root.reward
                self._iterations(ctx, run)
            finally:
                self._save_tree(ctx, run)
        self._choose_final(ctx, run)

    def _iterations(self, ctx: SearchContext, run: _Run) -> None:
        idle = 0
        while self._another_iteration(ctx, run):
            run.iteration += 1
            before = len(run.nodes)
            path = self._iterate(ctx, run)
            idle = idle + 1 if len(run.nodes) == before else 0
            logger.info("PromptAgent iteration {}: path {} (rewards {}); {} node(s) in the tree", run.iteration,
                        [n.id for n in path], [round(n.reward, 3) for n in path], len(run.nodes))
            self._save_tree(ctx, run)
            ctx.checkpoint(run.iteration)
            if run.out_of_budget:
                ctx.report.stopped_by_budget = True
                logger.info("PromptAgent: the budget left cannot pay for another child; validating")
                return
            if idle >= MAX_IDLE_ITERATIONS:
                if self._deepen(run):
                    idle = 0
                    continue
                logger.info("PromptAgent: {} iterations in a row added no node; the search is done", idle)
                return

    def _deepen(self, run: _Run) -> bool:
        """One level deeper, when the tree is full to the plan's depth limit and the budget still pays.

        The plan lowers the depth limit so that several iterations fit the caps; calls the search then
        leaves (cached rewards, early stops) buy depth back, up to the ``depth_limit`` the user set.
        """
        if run.depth_limit >= self.depth_limit:
            return False
        run.depth_limit += 1
        for node in run.nodes.values():
            if node.terminal and node.depth == run.depth_limit - 1:
                node.terminal = self._is_terminal(run, node)
        run.deepened += 1
        logger.info("PromptAgent: the tree is full to depth {}; the budget left buys depth {}", run.depth_limit - 1,
                    run.depth_limit)
        return True

    def _another_iteration(self, ctx: SearchContext, run: _Run) -> bool:
        if self.iterations is not None:
            return run.iteration < self.iterations
        if ctx.meter.remaining_calls("task") is None and ctx.meter.remaining_calls("prompt") is None:
            return run.iteration < ctx.plan.steps
        return True  # as long as the budget pays for children (checked before each one)

    def _iterate(self, ctx: SearchContext, run: _Run) -> list[_Node]:
        """Selection, expansion, simulation and backup; returns the iteration's path."""
        path = self._select(run)
        leaf = path[-1]
        if not leaf.terminal and leaf.depth < run.depth_limit:
            self._expand(ctx, run, leaf)
            self._simulate(ctx, run, path)
        self._backpropagate(path)
        run.paths.append([node.id for node in path])
        return path

    # ----------------------------------------------------------------------------- the four steps
    def _uct(self, node: _Node) -> float:
        visits_parent = len(node.parent.cum_rewards) if node.parent is not None else 0
        return node.q + self.w_exp * math.sqrt(math.log(visits_parent + 1) / max(1, len(node.cum_rewards)))

    def _select(self, run: _Run) -> list[_Node]:
        """From the root down by UCT (the earlier child on a tie) to a leaf or a terminal node."""
        node = run.root
        node.visits += 1
        path = [node]
        while node.children and not node.terminal:
            node = max(node.children, key=lambda child: (self._uct(child), -child.id))
            node.visits += 1
            path.append(node)
        return path

    def _simulate(self, ctx: SearchContext, run: _Run, path: list[_Node]) -> None:
        """Follow (expanding as needed) the best-reward child until a terminal node or an early stop."""
        node = path[-1]
        while True:
            if node.reward > run.threshold and node.depth > self.min_depth:
                run.threshold = node.reward  # a new best this deep: stop here, the bar rises
                return
            run.threshold = max(run.threshold, node.reward)
            if node.terminal or node.depth >= run.depth_limit or run.out_of_budget:
                return
            if not node.children and not node.expansions:  # one that came back empty waits for a later selection
                self._expand(ctx, run, node)
            if not node.children:
                return
            node = max(node.children, key=lambda child: (child.reward, -child.id))
            node.visits += 1
            path.append(node)

    @staticmethod
    def _backpropagate(path: list[_Node]) -> None:
        rewards = [node.reward for node in path]
        for i, node in enumerate(path):
            node.cum_rewards.append(sum(rewards[i:]))

    def _is_terminal(self, run: _Run, node: _Node) -> bool:
        if node.depth >= run.depth_limit:
            return True
        floor = (run.root.reward + node.parent.reward) / 2 if node.parent is not None else run.root.reward
        return node.depth > self.min_depth and node.reward < floor

    # -------------------------------------------------------------------------------- expanding
    def _expand(self, ctx: SearchContext, run: _Run, node: _Node) -> None:
        """Add up to ``width`` children to ``node`` (each kept as soon as it has its reward)."""
        node.expansions += 1
        if node is run.root and node.expansions == 1 and self.format_candidate:
            self._format_child(ctx, run, node)
        for k in range(run.width):
            if not self._room_for_a_child(ctx, run):
                run.out_of_budget = True
                return
            self._child(ctx, run, node, k)

    def _room_for_a_child(self, ctx: SearchContext, run: _Run) -> bool:
        task, prompt = ctx.meter.remaining_calls("task"), ctx.meter.remaining_calls("prompt")
        m = len(run.names)
        cost = (len(run.eval_indices) + min(self.batch_size, len(ctx.trainset))) * m
        return (task is None or task >= cost) and (prompt is None or prompt >= PROMPT_CALLS_PER_CHILD)

    def _format_child(self, ctx: SearchContext, run: _Run, root: _Node) -> None:
        state = ctx.initial_state
        for name, predictor in ctx.predictors:
            text = format_instruction(state[name].instruction, output_spaces(predictor, ctx.trainset))
            if text is not None:
                state = state.replace(name, state[name].with_instruction(text))
        if state.key() == ctx.initial_state.key():
            return
        record = ctx.add_candidate(state, step=run.iteration, origin="format", parent=root.id,
                                   meta={"action": "the answer format stated (no LM call)"})
        self._attach(ctx, run, root, record)

    def _child(self, ctx: SearchContext, run: _Run, node: _Node, k: int) -> _Node | None:
        """One action on ``node``: wrong answers on a batch, their analysis, a rewrite, its reward (the new child,
        or ``None`` when no usable rewrite came)."""
        key = f"promptagent/node{node.id}/expansion{node.expansions}/child{k}"
        name = run.names[(node.depth + k) % len(run.names)]
        state = ctx.state_of(node.record)
        wrong = self._wrong_answers(ctx, run, node, state, key)
        if not wrong:
            logger.debug("PromptAgent: node {} made no wrong answer to learn from", node.id)
            return None
        seen = [replace(w, example=ctx.shown_example(w.example)) for w in wrong]  # the labels the program writes
        inputs = {"task": run.tasks[name], "data_summary": run.summaries[name],
                  "instruction": state[name].instruction, "wrong_answers": render_wrong_answers(seen, name)}
        reasons = self._analysis(ctx, key, inputs)
        if not reasons:
            return None
        text = self._rewrite(ctx, run, node, name, key, inputs, reasons)
        if text is None:
            return None
        new_state = state.replace(name, state[name].with_instruction(text))
        if any(n.record.state == new_state.to_dict() for n in run.nodes.values()):
            run.duplicates += 1
            return None
        meta = {"reasons": reasons, "wrong_answers": [w.index for w in wrong], "key": key}
        record = ctx.add_candidate(new_state, step=run.iteration, origin="rewrite", predictor=name,
                                   parent=node.id, meta=meta)
        return self._attach(ctx, run, node, record)

    def _attach(self, ctx: SearchContext, run: _Run, parent: _Node, record: CandidateRecord) -> _Node:
        """A child of ``parent`` for ``record``, in the tree once its reward is known (a budget that ends while
        it is scored leaves it out)."""
        child = _Node(record, parent, parent.depth + 1)
        child.reward = self._reward(ctx, run, record)
        child.terminal = self._is_terminal(run, child)
        run.nodes[record.id] = child
        parent.children.append(child)
        return child

    def _reward(self, ctx: SearchContext, run: _Run, record: CandidateRecord) -> float:
        return ctx.score(record, [ctx.trainset[i] for i in run.eval_indices], REWARD_LABEL)

    def _wrong_answers(self, ctx: SearchContext, run: _Run, node: _Node, state: ProgramState,
                       key: str) -> list[WrongAnswer]:
        """Wrong answers on a fresh batch of training examples, else those already known on the evaluation split."""
        rng = random.Random(stable_int(self.seed, key, "batch"))
        batch = sorted(rng.sample(range(len(ctx.trainset)), min(self.batch_size, len(ctx.trainset))))
        outcomes = ctx.scorer.evaluate(state, [ctx.trainset[i] for i in batch], desc=f"batch #{node.id}")
        wrong = [WrongAnswer(i, ctx.trainset[i], o) for i, o in zip(batch, outcomes) if is_wrong(o)]
        if wrong:
            return wrong
        known = [(i, ctx.scorer.cached(state, ctx.trainset[i])) for i in run.eval_indices]
        wrong = [WrongAnswer(i, ctx.trainset[i], o) for i, o in known if o is not None and is_wrong(o)]
        return sorted(rng.sample(wrong, min(self.batch_size, len(wrong))), key=lambda w: w.index)

    def _analysis(self, ctx: SearchContext, key: str, inputs: dict[str, str]) -> list[str]:
        answer = ctx.ask(AnalyzeErrors, key=f"{key}/reasons", temperature=ctx.temperature,
                         validate=lambda a: bool(parse_reasons(a.reasons, self.n_reasons)),
                         n_reasons=self.n_reasons, **inputs)
        return parse_reasons(answer.reasons, self.n_reasons) if answer is not None else []

    def _rewrite(self, ctx: SearchContext, run: _Run, node: _Node, name: str, key: str, inputs: dict[str, str],
                 reasons: list[str]) -> str | None:
        ancestors = []
        cursor = node.parent
        while cursor is not None:
            ancestors.insert(0, ctx.state_of(cursor.record)[name].instruction)
            cursor = cursor.parent
        limit = self.max_instruction_chars
        allowed = "\n".join([*ancestors, inputs.get("instruction", "")])

        def rewrite(answer: dspy.Prediction, record: bool = False) -> str | None:
            return ctx.read_proposal(usable_instruction(clean_proposal(str(answer.new_instruction or "")), limit),
                                     RewriteInstruction, allowed=allowed, record=record)

        answer = ctx.ask(RewriteInstruction, key=f"{key}/rewrite", temperature=ctx.temperature,
                         validate=lambda a: rewrite(a, record=True) is not None,
                         earlier_versions=render_versions(ancestors),
                         reasons="\n".join(f"{i}. {r}" for i, r in enumerate(reasons, 1)), **inputs)
        return rewrite(answer) if answer is not None else None

    # ------------------------------------------------------------------------------- choosing
    def _paper_choice(self, run: _Run) -> tuple[list[int], _Node]:
        """The path with the highest mean reward (the earliest on a tie) and its best-reward node (the shallowest)."""
        paths = run.paths or [[run.root.id]]
        best = max(paths, key=lambda p: (sum(run.nodes[i].reward for i in p) / len(p), -paths.index(p)))
        node = max((run.nodes[i] for i in best), key=lambda n: (n.reward, -n.depth))
        return best, node

    def _choose_final(self, ctx: SearchContext, run: _Run) -> None:
        path, pick = self._paper_choice(run)
        others = sorted((n for n in run.nodes.values() if n is not pick), key=lambda n: (-n.reward, n.id))
        ordered = [n for n in [pick, *others] if n is not run.root]
        finalists = [n.record for n in ordered[: ctx.plan.settings["finalists"]]]
        tree = ctx.report.extra.setdefault("tree", {})
        tree.update({"best_path": path, "paper_choice": pick.id, "finalists": [r.id for r in finalists]})
        best = ctx.choose_by_validation(finalists, reserves=[n.record for n in ordered[len(finalists):]],
                                        tiebreak=lambda r: (r.scores.get(REWARD_LABEL, 0.0),))
        logger.info("PromptAgent: the paper's choice is node {} (reward {:.3f}) on path {}; returned candidate {}",
                    pick.id, pick.reward, path, best.id)

    def _save_tree(self, ctx: SearchContext, run: _Run) -> None:
        """The tree as data in ``report.extra["tree"]``: every node with its parent, depth, reward, visits, Q."""
        nodes = []
        for node in sorted(run.nodes.values(), key=lambda n: n.id):
            name = node.record.predictor or run.names[0]
            nodes.append({"id": node.id, "parent": node.parent.id if node.parent is not None else None,
                          "depth": node.depth, "reward": round(node.reward, 6), "visits": node.visits,
                          "q": round(node.q, 6), "backups": len(node.cum_rewards), "terminal": node.terminal,
                          "origin": node.record.origin, "predictor": node.record.predictor,
                          "prompt": node.record.state[name]["instruction"],
                          "children": [child.id for child in node.children]})
        tree = ctx.report.extra.setdefault("tree", {})
        tree.update({"root": run.root.id if run.root else None, "nodes": nodes, "paths": run.paths,
                     "eval_examples": run.eval_indices, "duplicates": run.duplicates,
                     "depth_limit": run.depth_limit, "deepened": run.deepened})


def _projected(projection: tuple[int, int, int, int]) -> int:
    """The task calls a plan's projection ``(iterations, children, fixed, per child)`` spends before validation."""
    _, children, fixed, per_child = projection
    return fixed + children * per_child
