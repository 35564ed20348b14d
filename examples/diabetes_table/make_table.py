"""How data/diabetes.csv was made (it ships; nothing runs this at tune time): scikit-learn's
bundled diabetes set in its original units, as a clinic's export would look: a patient id, two
text columns (the WHO class of the BMI and an age band) and about 3% of the blood pressure and
s5 readings left blank. The target, `progression`, is the disease's progression one year on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes


def bmi_class(bmi: float) -> str:
    if bmi < 18.5:
        return "underweight"
    if bmi < 25:
        return "normal"
    return "overweight" if bmi < 30 else "obese"


def main() -> None:
    frame = load_diabetes(as_frame=True, scaled=False).frame
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"patient": [f"P{i:04d}" for i in range(len(frame))]})
    table["age_band"] = [f"{int(age) // 10 * 10}s" for age in frame["age"]]
    table["sex"] = frame["sex"].astype(int)
    table["bmi"] = frame["bmi"]
    table["bmi_class"] = frame["bmi"].map(bmi_class)
    for column in ("bp", "s1", "s2", "s3", "s4", "s5", "s6"):
        table[column] = frame[column]
    for column in ("bp", "s5"):
        table.loc[rng.random(len(table)) < 0.03, column] = np.nan
    table["progression"] = frame["target"].astype(int)
    table.to_csv(Path(__file__).parent / "data" / "diabetes.csv", index=False)


if __name__ == "__main__":
    main()
