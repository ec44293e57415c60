# Training in the tests is quiet unless a test asks for progress (the test process ends
# after the suite, so the option is not restored).
options(rscvi.progress = FALSE)
