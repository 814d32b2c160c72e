"""What the bias task YAMLs reference; the work is done in compress.bias.task (documents, the shared-request
task class, per-document results) and compress.bias.metrics (the official metric definitions)."""

from compress.bias.crows_pairs import counted_share, counted_share_stderr  # noqa: F401
from compress.bias.metrics import sum_stderr  # noqa: F401  (names the YAMLs reference)
from compress.bias.task import (  # noqa: F401
    SharedRequestTask,
    StereoSetAggregate,
    crows_pairs_docs,
    crows_pairs_results,
    stereoset_docs,
    stereoset_results,
    total,
    winobias_docs,
    winobias_results,
)

# StereoSet: each score per target term then averaged (overall and per domain), with bootstrap stderrs.
ss, lms, icat = (StereoSetAggregate(s) for s in ("ss", "lms", "icat"))
ss_stderr, lms_stderr, icat_stderr = (StereoSetAggregate(s, stderr=True) for s in ("ss", "lms", "icat"))
ss_gender, lms_gender, icat_gender = (StereoSetAggregate(s, "gender") for s in ("ss", "lms", "icat"))
ss_gender_stderr, lms_gender_stderr, icat_gender_stderr = (
    StereoSetAggregate(s, "gender", stderr=True) for s in ("ss", "lms", "icat"))
ss_profession, lms_profession, icat_profession = (StereoSetAggregate(s, "profession") for s in ("ss", "lms", "icat"))
ss_profession_stderr, lms_profession_stderr, icat_profession_stderr = (
    StereoSetAggregate(s, "profession", stderr=True) for s in ("ss", "lms", "icat"))
ss_race, lms_race, icat_race = (StereoSetAggregate(s, "race") for s in ("ss", "lms", "icat"))
ss_race_stderr, lms_race_stderr, icat_race_stderr = (
    StereoSetAggregate(s, "race", stderr=True) for s in ("ss", "lms", "icat"))
ss_religion, lms_religion, icat_religion = (StereoSetAggregate(s, "religion") for s in ("ss", "lms", "icat"))
ss_religion_stderr, lms_religion_stderr, icat_religion_stderr = (
    StereoSetAggregate(s, "religion", stderr=True) for s in ("ss", "lms", "icat"))
