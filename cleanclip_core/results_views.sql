-- Views over the table `metrics` (one row per checkpoint and metric) of results/results.duckdb.

-- One row per checkpoint, one column per metric.
CREATE VIEW metrics_wide AS
SELECT
    run_id, dataset, attack, pretrain_objective, clean_method, lr, epoch,
    max(value) FILTER (metric = 'top1') AS top1,
    max(value) FILTER (metric = 'top5') AS top5,
    max(value) FILTER (metric = 'asr_top1') AS asr_top1,
    max(value) FILTER (metric = 'asr_top5') AS asr_top5,
    max(value) FILTER (metric = 'asr_top10') AS asr_top10,
    max(n_images) FILTER (metric = 'top1') AS n_images,
    max(n_images) FILTER (metric = 'asr_top1') AS n_triggered
FROM metrics
GROUP BY ALL;

-- Every cleaning run's epochs, with its start (the poisoned pretrained model) as epoch 0.
CREATE VIEW cleaning_trajectories AS
WITH runs AS (
    SELECT DISTINCT run_id, dataset, attack, pretrain_objective, clean_method, lr
    FROM metrics
    WHERE clean_method IS NOT NULL
)
SELECT
    runs.run_id, runs.dataset, runs.attack, runs.pretrain_objective, runs.clean_method, runs.lr,
    checkpoint.epoch, checkpoint.top1, checkpoint.top5,
    checkpoint.asr_top1, checkpoint.asr_top5, checkpoint.asr_top10
FROM runs
JOIN metrics_wide AS checkpoint
    ON checkpoint.dataset = runs.dataset
    AND checkpoint.attack = runs.attack
    AND checkpoint.pretrain_objective = runs.pretrain_objective
    AND (checkpoint.run_id = runs.run_id OR checkpoint.clean_method IS NULL)
ORDER BY runs.run_id, checkpoint.epoch;

-- The papers' oracle selection: per pretrained model and cleaning method, the best clean top-1
-- of any cleaning epoch (any learning rate) whose ASR@1 is at most 5%, beside the start's.
-- best_top1 is null when no epoch got the ASR that low.
CREATE VIEW best_accuracy_at_low_asr AS
WITH starts AS (
    SELECT dataset, attack, pretrain_objective, top1 AS start_top1, asr_top1 AS start_asr_top1
    FROM metrics_wide
    WHERE clean_method IS NULL
),
methods AS (
    SELECT DISTINCT dataset, attack, pretrain_objective, clean_method
    FROM metrics
    WHERE clean_method IS NOT NULL
),
best AS (
    SELECT dataset, attack, pretrain_objective, clean_method,
           top1 AS best_top1, asr_top1, lr, epoch
    FROM metrics_wide
    WHERE clean_method IS NOT NULL AND asr_top1 <= 0.05
    QUALIFY row_number() OVER (
        PARTITION BY dataset, attack, pretrain_objective, clean_method
        ORDER BY top1 DESC, lr, epoch
    ) = 1
)
SELECT
    methods.dataset, methods.attack, methods.pretrain_objective, methods.clean_method,
    starts.start_top1, starts.start_asr_top1,
    best.best_top1, best.asr_top1, best.lr, best.epoch
FROM methods
LEFT JOIN starts USING (dataset, attack, pretrain_objective)
LEFT JOIN best USING (dataset, attack, pretrain_objective, clean_method)
ORDER BY methods.dataset, methods.attack, methods.pretrain_objective, methods.clean_method;
