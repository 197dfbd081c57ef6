"""The data contract: every file the pipeline writes or reads, owned in one place.

Stages, tests and the dataset builder import file names, paths, column tables, member names, records and
the "done" rules from here; no other module spells them. ARCHITECTURE.md describes the same contract in
prose and points here as its source of truth.

- ``names``: file and folder names, keys, shard and member names, image extensions.
- ``paths``: ``RunPaths`` / ``ReleasePaths`` (every path below ``RUN/`` and ``REL/``).
- ``records``: the base of the typed records (``read``/``write``, keys checked on read).
- one module per file family, each owning its names, columns and typed records: ``run`` (run.yaml,
  classes.json), ``generated`` (shards: sample fields, done rules), ``scores`` (the score table,
  ``summary.json``, ``models.json``), ``diagnosis`` (verdicts, the diagnosis table, ``diagnosis.json``, the
  centroids), ``selection``, ``release`` (``_info.json``), ``state`` (``state/{stage}.json``: what a stage was
  made from).
- ``typed``: reading a record with every key and value type checked.

```
RUN/run.yaml                     resolved config, config hash, library versions, plan segments (written first)
RUN/classes.json                 the class set in label order
RUN/generated/00000.tar          a finished shard (00000.tar.partial while written) + 00000.json stats
RUN/scores/00000.parquet         one row per sample (the score table) + 00000.{inception,clip,logits}.npy features
RUN/scores/models.json           the scorers the shards were computed with
RUN/scores/class_text_embeddings.npy   C×D CLIP text embeddings of the zero-shot class texts
RUN/scores/summary.json          dataset metrics (ScoreSummary), written last
RUN/diagnosis.parquet            one row per class: verdict and evidence (+ diagnosis.json, diagnosis_centroids.npz)
RUN/selection.parquet            every key: kept yes/no, the reason, the composite (+ selection.json summary)
RUN/thresholds.yaml              thresholds written by `run` from a config's inline `select.thresholds`
RUN/pipeline.json                a log of what the last `run` did with each stage (never read to decide)
RUN/report/index.html            the report
REL/README.md, REL/_info.json, REL/data/{split}-NNNNN.tar       a release
```
"""

from imagenet_plus.contract.diagnosis import (  # noqa: F401
    CENTROIDS_CLASS_IDS,
    CENTROIDS_REAL,
    CENTROIDS_SYNTHETIC,
    DIAGNOSIS_COLUMNS,
    REFERENCE_CLASS_IDS,
    REFERENCE_CLIP,
    VERDICT_AMBIGUOUS,
    VERDICT_CONCEPT_FAILURE,
    VERDICT_LOW_ADHERENCE,
    VERDICT_LOW_DIVERSITY,
    VERDICT_OK,
    VERDICT_SEVERITY,
    VERDICTS,
    DiagnosisCentroids,
    DiagnosisColumns,
    DiagnosisSummary,
    FlaggedClass,
    Geometry,
    diagnosis_frame,
    diagnosis_schema,
    read_remedy_strategies_file,
)
from imagenet_plus.contract.generated import (  # noqa: F401
    COMMON_SAMPLE_FIELDS,
    REAL_IMAGE_FIELDS,
    SAMPLE_FIELDS,
    ShardStats,
    clean_partials,
    done_shards,
    expected_count,
    generated_done,
    member_key,
    real_image_fields,
    shard_problem,
    stats_digest,
    stats_path,
)
from imagenet_plus.contract.names import (  # noqa: F401
    CAPTION_COLUMNS,
    CAPTIONER_JSON,
    CAPTIONS_DIR,
    CARD_NAME,
    CLASS_ID_MAX,
    CLASS_TEXT_EMBEDDINGS,
    CLASSES_JSON,
    DIAGNOSIS_CACHE_DIR,
    DIAGNOSIS_CENTROIDS,
    DIAGNOSIS_JSON,
    DIAGNOSIS_PARQUET,
    EVAL_JSON,
    GENERATED_DIR,
    GENERATED_PARTIAL_PATTERN,
    GENERATED_TAR_PATTERN,
    IMAGE_EXTENSIONS,
    INFO_NAME,
    KEY_PATTERN,
    LLM_PROMPTS_JSON,
    LOCK_NAME,
    MARKERS_DIR,
    MEMBER_NAME_PATTERN,
    MODELS_JSON,
    NAME_MAX,
    PARTIAL_MARKER,
    PARTIAL_SUFFIX,
    PIPELINE_FAILED,
    PIPELINE_JSON,
    READ_IMAGE_EXTENSIONS,
    RECORDED_LIBRARIES,
    RELEASE_DATA_DIR,
    REPORT_DIR,
    REPORT_FILE_PATTERN,
    REPORT_INDEX,
    REPORT_JSON,
    REPORT_PLOTS,
    REPORT_SHEETS_DIR,
    RUN_YAML,
    SCORE_PARTIAL_PATTERN,
    SCORES_DIR,
    SELECTION_JSON,
    SELECTION_PARQUET,
    SPLITS,
    STATE_DIR,
    SUMMARY_JSON,
    TAR_MTIME,
    THRESHOLDS_YAML,
    class_id_of_key,
    image_member,
    make_key,
    release_shard_name,
    shard_name,
    split_member_name,
)
from imagenet_plus.contract.ownership import F, check_run_folder, locked_run  # noqa: F401
from imagenet_plus.contract.paths import ReleasePaths, RunPaths, ScoreFiles, run_paths  # noqa: F401
from imagenet_plus.contract.records import JsonRecord, dataclass_from_dict, read_json  # noqa: F401
from imagenet_plus.contract.release import (  # noqa: F401
    IMAGEFOLDER_MARKER,
    SCORES_MEMBER,
    ImageFolderMarker,
    ReleaseInfo,
    SplitInfo,
    check_relative_name,
    inside_release,
    made_from_run,
    parse_splits,
    read_release_info,
    release_file_names,
)
from imagenet_plus.contract.report import ReportSummary  # noqa: F401
from imagenet_plus.contract.run import (  # noqa: F401
    PER_CLASS_KINDS,
    RESTORE_RUN_YAML,
    SEGMENT_KINDS,
    RunRecord,
    Segment,
    check_plan,
    library_versions,
    new_run_id,
    read_class_records,
    read_run_record,
    read_run_yaml,
    write_run_yaml,
)
from imagenet_plus.contract.scores import (  # noqa: F401
    COL_CLASSIFIER_PROB,
    COL_CLASSIFIER_TOP1,
    COL_CLASSIFIER_TOP5,
    COL_CLIP_CLASS_PROB,
    COL_CLIP_CLASS_RANK,
    COL_CLIP_CLASS_SCORE,
    COL_CLIP_SCORE,
    COL_DUP_OF,
    COL_ISC_KL,
    COL_NSFW_SCORE,
    COL_REALISM,
    COMPOSITE,
    DATASET_PASS_COLUMNS,
    DEFAULT_INCEPTION_WEIGHTS,
    METRIC_LABELS,
    RELEASE_SCORE_FIELDS,
    REQUIRED_SCORE_COLUMNS,
    SCORE_COLUMNS,
    BadShard,
    ClassScores,
    DatasetMetrics,
    MetricLabel,
    ModelsRecord,
    ScoredShard,
    ScoreSummary,
    SummaryModels,
    card_metric_rows,
    check_score_columns,
    headline_labels,
    score_schema,
    score_table,
    stale_scores,
    unreadable_scores,
)
from imagenet_plus.contract.selection import (  # noqa: F401
    PASSED_REASONS,
    REASON_DUPLICATE,
    REASON_KEPT,
    REASON_NOT_TOP5,
    REASON_NSFW,
    REASON_OVER_QUOTA,
    SELECTION_COLUMNS,
    SelectionSummary,
    selection_schema,
)
from imagenet_plus.contract.state import StageState  # noqa: F401
from imagenet_plus.contract.typed import TypedRecord, typed_from_dict, typed_values  # noqa: F401
