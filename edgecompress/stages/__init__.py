"""Pipeline stages: data, finetune, distill, export, bench, report (pruning and QAT come later)."""
