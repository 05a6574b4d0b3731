"""Write digits-thin.csv and digits-thick.csv: scikit-learn's digits, split by stroke weight.

A digit image is "thick" when its total ink is above the median of its own class, else
"thin". Both files hold all ten classes and the same 64 pixel columns, so a model trained on
one can start a model of the other (configs/transfer-*.yaml). Run from this folder:
python make_digit_strokes.py
"""

from sklearn.datasets import load_digits

frame = load_digits(as_frame=True).frame.astype(int)
frame.columns = [c.replace("pixel_", "p") if c != "target" else "digit" for c in frame.columns]
ink = frame.drop(columns="digit").sum(axis=1)
thick = ink > ink.groupby(frame.digit).transform("median")
frame[~thick].to_csv("digits-thin.csv", index=False)
frame[thick].to_csv("digits-thick.csv", index=False)
