# Developer entry points. The Rust target dir lives outside the checkout so that installs
# from fresh clones (CI) stay incremental: a clean release build of burn takes 3-5 minutes.
TARGET_DIR ?= $(HOME)/.cache/rscvi/target
CUDA_TARGET_DIR ?= $(HOME)/.cache/rscvi/target-cuda
CARGO_MANIFEST = src/rust/Cargo.toml
export PATH := $(PATH):$(HOME)/.cargo/bin

.PHONY: deps install demo test test-r document check clean

deps:
	tools/install-deps.sh

install: deps
	RSCVI_TARGET_DIR=$(TARGET_DIR) R CMD INSTALL --no-test-load .

demo: install
	Rscript tools/demo.R

# Rust tests share the R build's target dir: `--workspace` keeps the feature set identical
# (toolchain.md pitfall 8), so this reuses the already built crates. The cuda feature is only
# type-checked (no GPU here) in its own target dir, since flipping features rebuilds burn.
# One test thread: Flex's random stream is process-global, so a test that seeds it and
# compares two runs (e.g. MULTIVI's sparse vs dense first layers) fails whenever a parallel
# test draws in between (~5 s instead of ~4 s).
test: install
	cargo test --release --workspace --manifest-path $(CARGO_MANIFEST) --target-dir $(TARGET_DIR) -- --test-threads=1
	cargo check --release -p rscvi-cli --features cuda --manifest-path $(CARGO_MANIFEST) --target-dir $(CUDA_TARGET_DIR)
	Rscript tools/run-tests.R

# R tests only, against the installed package.
test-r:
	Rscript tools/run-tests.R

# Regenerates R/extendr-wrappers.R from the installed library, then man/ and NAMESPACE, and
# reinstalls so the installed package matches them (cargo is a no-op the second time).
document: install
	Rscript tools/document.R
	RSCVI_TARGET_DIR=$(TARGET_DIR) R CMD INSTALL --no-test-load .

# R CMD check without CRAN access: an empty local repository keeps it from trying the index.
check: deps
	mkdir -p /tmp/rscvi-emptyrepo/src/contrib
	: > /tmp/rscvi-emptyrepo/src/contrib/PACKAGES
	echo 'options(repos = c(CRAN = "file:///tmp/rscvi-emptyrepo"))' > /tmp/rscvi-rprofile.R
	rm -f rscvi_*.tar.gz
	RSCVI_TARGET_DIR=$(TARGET_DIR) R_PROFILE_USER=/tmp/rscvi-rprofile.R R CMD build .
	RSCVI_TARGET_DIR=$(TARGET_DIR) R_PROFILE_USER=/tmp/rscvi-rprofile.R \
	  _R_CHECK_FORCE_SUGGESTS_=false R CMD check --no-manual rscvi_*.tar.gz

# Local build outputs only; the shared cargo target dirs under ~/.cache/rscvi are kept
# (remove them by hand, or `cargo clean --target-dir ...`, to force a full rebuild).
clean:
	./cleanup
	rm -f src/*.o src/*.so src/*.dll
	rm -rf rscvi_*.tar.gz rscvi.Rcheck rscvi-demo
