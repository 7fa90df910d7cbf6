"""Named, parameterised Cypher queries: declared once here, run by every backend and by ``automc kb query``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from automc.errors import NotFoundError, ValidationError
from automc.kb.states import State

_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    type: type = str
    default: Any = _REQUIRED


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    text: str
    params: tuple[Param, ...] = ()
    bulk: bool = False  # returns a whole table for learning, not an interactive answer

    def bind(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Check and convert parameters (CLI values arrive as strings); raises ``ValidationError``."""
        known = {p.name: p for p in self.params}
        extra = sorted(set(given) - set(known))
        if extra:
            raise ValidationError(f"query {self.name!r} takes no parameter {extra[0]!r}", field=extra[0])
        out = {}
        for p in self.params:
            if p.name not in given:
                if p.default is _REQUIRED:
                    raise ValidationError(f"query {self.name!r} needs --param {p.name}=...", field=p.name)
                out[p.name] = p.default
                continue
            value = given[p.name]
            try:
                out[p.name] = p.type(value) if value is not None else None
            except (TypeError, ValueError):
                raise ValidationError(f"expected {p.type.__name__}, got {value!r}", field=p.name) from None
        return out


QUERIES: dict[str, Query] = {q.name: q for q in (
    Query("methods", "the compression methods with their hyperparameters and techniques",
          "MATCH (m:Method) "
          "OPTIONAL MATCH (m)-[:HAS_HYPERPARAMETER]->(h:Hyperparameter) "
          "WITH m, collect(h.name) AS hyperparameters "
          "OPTIONAL MATCH (m)-[:USES_TECHNIQUE]->(t:Technique) "
          "RETURN m.name AS method, m.title AS title, hyperparameters, collect(t.name) AS techniques "
          "ORDER BY method"),
    Query("strategies-of-method", "catalogue strategies of one method",
          "MATCH (s:Strategy)-[:HAS_METHOD]->(m:Method {name: $method}) WHERE s.in_catalog = true "
          "RETURN s.id AS strategy, s.settings AS settings ORDER BY strategy LIMIT $limit",
          (Param("method"), Param("limit", int, 100000))),
    Query("strategies-with-setting", "strategies that use one hyperparameter setting, e.g. kd_alpha=0.3",
          "MATCH (s:Strategy)-[:HAS_SETTING]->(h:HyperparameterSetting {id: $setting}) "
          "RETURN s.id AS strategy, s.method AS method ORDER BY strategy LIMIT $limit",
          (Param("setting"), Param("limit", int, 100000))),
    Query("settings-of-strategy", "the hyperparameter settings of one strategy",
          "MATCH (s:Strategy {id: $strategy})-[:HAS_SETTING]->(h:HyperparameterSetting) "
          "RETURN h.hyperparameter AS hyperparameter, h.value AS value ORDER BY hyperparameter",
          (Param("strategy"),)),
    Query("methods-with-technique", "methods that use one technique",
          "MATCH (m:Method)-[:USES_TECHNIQUE]->(t:Technique {name: $technique}) RETURN m.name AS method "
          "ORDER BY method", (Param("technique"),)),
    Query("experiences-of-method", "published and measured results of one method (any level)",
          "MATCH (e:Experience)-[:EXP_ON_TASK]->(t:Task) WHERE e.algorithm = $method "
          "RETURN e.id AS id, e.level AS level, t.model AS model, t.dataset AS dataset, e.target_pr AS target_pr, "
          "e.pr AS pr, e.fr AS fr, e.ar AS ar, e.settings AS settings, e.source AS source "
          "ORDER BY model, dataset, pr, id LIMIT $limit", (Param("method"), Param("limit", int, 1000))),
    Query("experiences-on-dataset", "results reported on one dataset",
          "MATCH (e:Experience)-[:EXP_ON_TASK]->(t:Task {dataset: $dataset}) "
          "RETURN e.algorithm AS algorithm, t.model AS model, e.pr AS pr, e.fr AS fr, e.ar AS ar, "
          "e.source AS source ORDER BY algorithm, model, pr LIMIT $limit",
          (Param("dataset"), Param("limit", int, 1000))),
    Query("experience-rows", "experiences with task features, for learning (NN_exp)",
          "MATCH (e:Experience)-[:EXP_ON_TASK]->(t:Task) "
          "OPTIONAL MATCH (e)-[:EXP_OF_STRATEGY]->(s:Strategy) "
          "RETURN e.id AS id, e.level AS level, e.algorithm AS method, s.id AS strategy, e.settings AS settings, "
          "e.source AS source, e.target_pr AS target_pr, e.ar AS ar, e.pr AS pr, e.fr AS fr, t.id AS task, "
          "t.model AS model, t.num_classes AS num_classes, "
          "t.image_size AS image_size, t.image_channels AS image_channels, t.num_images AS num_images, "
          "t.base_accuracy AS base_accuracy, t.params AS params, t.flops AS flops ORDER BY id", bulk=True),
    Query("experience-sources", "method-level results per source, for weighting sources by their agreement with "
          "measured results (automc.embed.agreement.source_weights)",
          "MATCH (e:Experience)-[:EXP_ON_TASK]->(t:Task) WHERE e.level <> 'algorithm' "
          "RETURN e.id AS id, e.source AS source, e.algorithm AS method, t.model AS model, t.dataset AS dataset, "
          "e.target_pr AS target_pr, e.accuracy AS accuracy, e.ar AS ar ORDER BY source, model, dataset, method, "
          "target_pr, accuracy, id", bulk=True),
    Query("strategy-experiences", "strategy-level results reaching a parameter reduction, with their task's "
          "features (a search's reference baseline: automc.search.final.kb_baseline), e.g. min_pr=0.4",
          "MATCH (e:Experience)-[:EXP_OF_STRATEGY]->(s:Strategy) MATCH (e)-[:EXP_ON_TASK]->(t:Task) "
          "WHERE e.pr >= $min_pr AND e.ar IS NOT NULL "
          "RETURN e.id AS id, s.id AS strategy, e.algorithm AS method, e.ar AS ar, e.pr AS pr, e.source AS source, "
          "t.id AS task, t.model AS model, t.dataset AS dataset, t.num_classes AS num_classes, "
          "t.image_size AS image_size, t.image_channels AS image_channels, t.num_images AS num_images, "
          "t.base_accuracy AS base_accuracy, t.params AS params, t.flops AS flops ORDER BY task, strategy, id",
          (Param("min_pr", float, 0.0),)),
    Query("tasks", "tasks known to the knowledge base",
          "MATCH (t:Task) RETURN t.id AS task, t.model AS model, t.dataset AS dataset, t.num_images AS images, "
          "t.base_accuracy AS base_accuracy, t.params AS params, t.flops AS flops ORDER BY task"),
    Query("evaluations", "evaluated schemes, filtered by task, search run and state (empty = any)",
          "MATCH (e:Evaluation)-[:EVAL_OF_SCHEME]->(s:Scheme) MATCH (e)-[:EVAL_ON_TASK]->(t:Task) "
          "WHERE ($task = '' OR t.id = $task) AND ($run = '' OR e.search_run = $run) "
          "AND ($state = '' OR e.state = $state) "
          "RETURN e.id AS id, e.state AS state, s.text AS scheme, s.id AS scheme_id, t.id AS task, "
          "e.search_run AS search_run, e.target_pr AS target_pr, e.params AS params, e.flops AS flops, "
          "e.accuracy AS accuracy, e.accuracy_low AS accuracy_low, e.accuracy_high AS accuracy_high, "
          "e.val_accuracy AS val_accuracy, e.ar AS ar, e.pr AS pr, e.fr AS fr, e.seconds AS seconds, "
          "e.device AS device, e.created AS created ORDER BY created, id",
          (Param("task", str, ""), Param("run", str, ""), Param("state", str, State.COMPLETE.value))),
    Query("best-evaluations", "the most accurate complete evaluations on a task reaching a parameter reduction "
          "(by test accuracy; search steps, whose test accuracy is never measured, after the others)",
          f"MATCH (e:Evaluation {{state: '{State.COMPLETE}'}})-[:EVAL_ON_TASK]->(t:Task {{id: $task}}) "
          "MATCH (e)-[:EVAL_OF_SCHEME]->(s:Scheme) WHERE e.pr >= $min_pr "
          "RETURN s.text AS scheme, e.pr AS pr, e.fr AS fr, e.accuracy AS accuracy, e.ar AS ar "
          "ORDER BY e.accuracy IS NULL, accuracy DESC, e.val_accuracy DESC, scheme LIMIT $limit",
          (Param("task"), Param("min_pr", float, 0.0), Param("limit", int, 10))),
    Query("test-records", "per-image test correctness of complete evaluations (final models and compress runs) for "
          "paired tests (automc.compress.paired), of one search run and/or one evaluation id (empty = any)",
          f"MATCH (e:Evaluation {{state: '{State.COMPLETE}'}})-[:EVAL_OF_SCHEME]->(s:Scheme) "
          "WHERE e.test_correct_bits IS NOT NULL AND ($run = '' OR e.search_run = $run) AND ($id = '' OR e.id = $id) "
          "RETURN e.id AS id, s.text AS scheme, e.search_run AS search_run, e.fidelity AS fidelity, "
          "e.accuracy AS accuracy, e.test_ids_hash AS test_ids_hash, e.test_correct_bits AS test_correct_bits, "
          "e.created AS created ORDER BY created, id", (Param("run", str, ""), Param("id", str, ""))),
    Query("scheme-steps", "the ordered strategies of one scheme",
          "MATCH (s:Scheme {id: $scheme})-[r:STEP]->(x:Strategy) RETURN r.position AS position, x.id AS strategy "
          "ORDER BY position", (Param("scheme"),)),
    Query("embedding-runs", "embedding trainings written to the store",
          "MATCH (r:EmbeddingRun) RETURN r.id AS id, r.created AS created, r.kb_version AS kb_version, "
          "r.config AS config, r.metrics AS metrics ORDER BY created"),
    # -- search runs (automc.kb.runs, ``automc runs`` / ``automc report``) -------------------------------
    Query("search-runs", "search runs, newest first, with their evaluated steps (a step cut short by an "
          "interruption is not one) and best validation accuracy at PR >= gamma",
          "MATCH (r:SearchRun) OPTIONAL MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(r) "
          f"WITH r, count(CASE WHEN e.fidelity = 'search' AND (e.state = '{State.COMPLETE}' "
          f"OR e.state = '{State.FAILED}') THEN 1 END) AS n, "
          f"max(CASE WHEN e.fidelity = 'search' AND e.state = '{State.COMPLETE}' AND e.pr >= r.target_pr "
          "THEN e.val_accuracy END) AS best "
          "RETURN r.id AS id, r.algorithm AS strategy, r.task AS task, r.state AS state, n AS evaluations, "
          "r.budget AS budget, best, r.target_pr AS target_pr, r.started AS started, r.finished AS finished "
          "ORDER BY started DESC, id LIMIT $limit", (Param("limit", int, 100),)),
    Query("run-evaluations", "every evaluation of one search run (all fidelities and states), in the run's step "
          "order (records without a step after the others, by round and start)",
          "MATCH (e:Evaluation)-[:EVAL_IN_RUN]->(r:SearchRun {id: $run}) MATCH (e)-[:EVAL_OF_SCHEME]->(s:Scheme) "
          "RETURN e.id AS id, e.state AS state, s.text AS scheme, s.id AS scheme_id, s.length AS length, "
          "e.fidelity AS fidelity, e.round AS round, e.parent AS parent, e.params AS params, e.flops AS flops, "
          "e.pr AS pr, e.fr AS fr, e.ar AS ar, e.val_accuracy AS val_accuracy, "
          "e.val_accuracy_low AS val_accuracy_low, e.val_accuracy_high AS val_accuracy_high, "
          "e.accuracy AS accuracy, e.accuracy_low AS accuracy_low, e.accuracy_high AS accuracy_high, "
          "e.step_ar AS step_ar, e.step_pr AS step_pr, e.epochs AS epochs, e.data_fraction AS data_fraction, "
          "e.seed AS seed, e.val_source AS val_source, e.seconds AS seconds, e.train_seconds AS train_seconds, "
          "e.device AS device, e.error AS error, e.created AS created, e.finished AS finished, e.step AS step, "
          "e.compute AS compute, e.rung AS rung, e.prediction AS prediction "
          "ORDER BY step, round, created, length, scheme, id", (Param("run"),)),
    Query("best-schemes", "the most accurate complete schemes reaching a parameter reduction on one model's tasks "
          "(final models by test accuracy first, then search steps), e.g. model=resnet56 min_pr=0.4",
          f"MATCH (e:Evaluation {{state: '{State.COMPLETE}'}})-[:EVAL_ON_TASK]->(t:Task {{model: $model}}) "
          "MATCH (e)-[:EVAL_OF_SCHEME]->(s:Scheme) WHERE e.pr >= $min_pr AND s.length > 0 "
          "RETURN s.text AS scheme, t.id AS task, e.fidelity AS fidelity, e.pr AS pr, e.fr AS fr, "
          "e.val_accuracy AS val_accuracy, e.accuracy AS accuracy, e.search_run AS search_run, e.id AS evaluation "
          "ORDER BY e.accuracy IS NULL, accuracy DESC, val_accuracy DESC, evaluation LIMIT $limit",
          (Param("model"), Param("min_pr", float, 0.0), Param("limit", int, 10))),
    # -- search reuse (automc.search.reuse) ------------------------------------------------------------------
    Query("search-steps", "complete search evaluations with their scheme, step effect and task features, "
          "for learning across tasks (F_mo); tasks other than $exclude",
          f"MATCH (e:Evaluation {{state: '{State.COMPLETE}'}})-[:EVAL_OF_SCHEME]->(s:Scheme) "
          "MATCH (e)-[:EVAL_ON_TASK]->(t:Task) "
          "WHERE t.id <> $exclude AND ($fidelity = '' OR e.fidelity = $fidelity) "
          "RETURN e.id AS id, s.text AS scheme, s.length AS length, t.id AS task, e.search_run AS search_run, "
          "e.fidelity AS fidelity, e.round AS round, e.target_pr AS target_pr, e.val_accuracy AS val_accuracy, "
          "e.params AS eval_params, e.pr AS pr, e.step_ar AS step_ar, e.step_pr AS step_pr, "
          "t.num_classes AS num_classes, t.image_size AS image_size, t.image_channels AS image_channels, "
          "t.num_images AS num_images, t.base_accuracy AS base_accuracy, t.params AS params, t.flops AS flops "
          "ORDER BY task, search_run, id",
          (Param("exclude", str, ""), Param("fidelity", str, "search")), bulk=True),
    Query("task", "one task's features",
          "MATCH (t:Task {id: $task}) RETURN t.id AS task, t.model AS model, t.dataset AS dataset, "
          "t.num_classes AS num_classes, t.image_size AS image_size, t.image_channels AS image_channels, "
          "t.num_images AS num_images, t.base_accuracy AS base_accuracy, t.params AS params, t.flops AS flops",
          (Param("task"),)),
)}


def get(name: str) -> Query:
    """The named query; raises ``NotFoundError`` listing the names."""
    try:
        return QUERIES[name]
    except KeyError:
        raise NotFoundError(f"no named query {name!r}; known: {', '.join(sorted(QUERIES))}") from None
