"""Pipeline stages: data, finetune, distill, prune, export, bench, report (QAT comes later)."""
