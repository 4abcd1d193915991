-- Views over the table `metrics` (one row per checkpoint and metric) of a study's results.duckdb.
-- The identity columns in braces are filled in from the study grid (cleanclip_core.study):
-- {{pretrain}} names a pretrained model, {{clean}} a cleaning run within it.

-- One row per checkpoint, one column per metric.
CREATE VIEW metrics_wide AS
SELECT
    run_id, {identity},
    max(value) FILTER (metric = 'top1') AS top1,
    max(value) FILTER (metric = 'top5') AS top5,
    max(value) FILTER (metric = 'asr_top1') AS asr_top1,
    max(value) FILTER (metric = 'asr_top5') AS asr_top5,
    max(value) FILTER (metric = 'asr_top10') AS asr_top10,
    max(n_images) FILTER (metric = 'top1') AS n_images,
    max(n_images) FILTER (metric = 'asr_top1') AS n_triggered,
    max(n_classes) AS n_classes
FROM metrics
GROUP BY ALL;

-- Every cleaning run's epochs, with its start (the poisoned pretrained model) as epoch 0.
CREATE VIEW cleaning_trajectories AS
WITH runs AS (
    SELECT DISTINCT run_id, {pretrain}, {clean}
    FROM metrics
    WHERE clean_method IS NOT NULL
)
SELECT
    run.run_id, {run_pretrain}, {run_clean},
    checkpoint.epoch, checkpoint.top1, checkpoint.top5,
    checkpoint.asr_top1, checkpoint.asr_top5, checkpoint.asr_top10,
    checkpoint.n_images, checkpoint.n_triggered, checkpoint.n_classes
FROM runs AS run
JOIN metrics_wide AS checkpoint
    ON checkpoint.run_id = run.run_id
    OR (checkpoint.clean_method IS NULL AND {same_pretrained_model})
ORDER BY run.run_id, checkpoint.epoch;

-- The study's summary: one row per pretrained model x cleaning method x poisons in the cleaning
-- set x replicate seed, over the method's learning rates. The start's top-1, ASR@1 and ASR@10; the
-- papers' oracle selection (the best top-1 of any cleaning epoch whose ASR@1 is at most the success
-- threshold, with its lr and epoch; null when no epoch got the ASR that low); the lowest ASR@1 any epoch reached; the
-- last epoch of the run whose last epoch has the lowest ASR@1; the chance level of top-1 (one
-- over the start's classes); and near_chance: the start's top-1, or the oracle's, is below twice
-- chance, where a low ASR@1 only shows a model that classifies nothing (null when the start's
-- classes were not recorded); attack_failed: the start's ASR@1 is below the attack floor, so its
-- backdoor never took and no cleaning of it removes one (a clean control's, by construction);
-- n_images and n_triggered, the evaluation images the proportions count; n_poisons, the attack's
-- poisons in pretraining (table attacks; 0 for a clean control). The success threshold
-- and the attack floor are the config's (table criteria).
CREATE VIEW study_summary AS
WITH starts AS (
    SELECT {pretrain}, top1 AS start_top1, asr_top1 AS start_asr_top1, asr_top10 AS start_asr_top10,
           1.0 / n_classes AS chance_top1, n_images, n_triggered
    FROM metrics_wide
    WHERE clean_method IS NULL
),
cleaned AS (
    SELECT * FROM metrics_wide WHERE clean_method IS NOT NULL
),
groups AS (
    SELECT {group}, min(asr_top1) AS lowest_asr_top1
    FROM cleaned
    GROUP BY ALL
),
best AS (
    SELECT {group}, top1 AS best_top1, asr_top1 AS best_asr_top1, asr_top10 AS best_asr_top10,
           lr AS best_lr, epoch AS best_epoch
    FROM cleaned
    WHERE asr_top1 <= {success_asr}
    QUALIFY row_number() OVER (PARTITION BY {group} ORDER BY top1 DESC, lr, epoch) = 1
),
last_epochs AS (
    SELECT * FROM cleaned
    QUALIFY epoch = max(epoch) OVER (PARTITION BY run_id)
),
last AS (
    SELECT {group}, lr AS last_lr, epoch AS last_epoch, top1 AS last_top1,
           asr_top1 AS last_asr_top1, asr_top10 AS last_asr_top10
    FROM last_epochs
    QUALIFY row_number() OVER (PARTITION BY {group} ORDER BY asr_top1, top1 DESC, lr) = 1
)
SELECT
    {group},
    starts.start_top1, starts.start_asr_top1, starts.start_asr_top10,
    best.best_top1, best.best_asr_top1, best.best_asr_top10, best.best_lr, best.best_epoch,
    groups.lowest_asr_top1,
    last.last_lr, last.last_epoch, last.last_top1, last.last_asr_top1, last.last_asr_top10,
    starts.chance_top1,
    starts.start_top1 < 2 * starts.chance_top1 OR coalesce(best.best_top1 < 2 * starts.chance_top1, false)
        AS near_chance,
    starts.start_asr_top1 < {attack_floor} AS attack_failed,
    starts.n_images, starts.n_triggered, attacks.n_poisons
FROM groups
LEFT JOIN starts USING ({pretrain})
LEFT JOIN attacks USING (attack)
LEFT JOIN best USING ({group})
LEFT JOIN last USING ({group})
ORDER BY {group};

-- Every stopping rule's chosen epoch of every cleaning run (table stopping_choices, chosen by
-- cleanclip_core.stopping), with that checkpoint's top-1 and ASR@1, the oracle's, the rule's
-- regret (the oracle's top-1 minus its own) and whether it kept the backdoor (ASR@1 above the
-- success threshold).
CREATE VIEW stopping_rules AS
SELECT
    chosen.* EXCLUDE (top5, asr_top5, asr_top10), choice.rule,
    oracle.epoch AS oracle_epoch, oracle.top1 AS oracle_top1, oracle.asr_top1 AS oracle_asr_top1,
    oracle.top1 - chosen.top1 AS top1_regret,
    chosen.asr_top1 > {success_asr} AS backdoor_kept
FROM stopping_choices AS choice
JOIN cleaning_trajectories AS chosen USING (run_id, epoch)
JOIN stopping_choices AS oracle_choice ON oracle_choice.run_id = choice.run_id AND oracle_choice.rule = 'oracle'
JOIN cleaning_trajectories AS oracle ON oracle.run_id = oracle_choice.run_id AND oracle.epoch = oracle_choice.epoch
ORDER BY chosen.run_id, choice.rule;

-- Every kept pretraining epoch (table pretraining_curve_metrics: empty unless the study sets
-- pretrain.curve), one column per metric, with the range of top-1 over the epoch and the two
-- before it (null before the third epoch): at a run's last epoch, the plateau test.
CREATE VIEW pretraining_curve AS
WITH wide AS (
    PIVOT pretraining_curve_metrics
    ON metric IN ('top1', 'top5', 'asr_top1', 'asr_top5', 'asr_top10')
    USING max(value)
    GROUP BY run_id, {pretrain}, epoch
)
SELECT
    *,
    CASE WHEN count(*) OVER last_three = 3 THEN max(top1) OVER last_three - min(top1) OVER last_three END
        AS top1_range_last_three
FROM wide
WINDOW last_three AS (PARTITION BY run_id ORDER BY epoch ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)
ORDER BY run_id, epoch;
