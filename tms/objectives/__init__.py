"""Pure tensor maths: token NLL, policy-gradient losses, KL estimators (shared by training and evaluation)."""
