"""Long-context tasks shared by training data (swaa.data) and evaluation (swaa.eval): synthetic task generators,
their filler haystacks, and answer scorers."""
