"""Evaluation: metrics (Dice, HD95, surface Dice, the Kaggle score) and the
``evaluate`` command's runs, reports and plots."""
