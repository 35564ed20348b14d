"""An imbalanced classification a team might have: rare malignant tumours among benign ones."""
