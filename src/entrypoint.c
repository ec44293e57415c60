// Registration entry point of the shared library. extendr generates
// R_init_rscvi_extendr (from `extendr_module! { mod rscvi; ... }`); R looks for R_init_rscvi.
void R_init_rscvi_extendr(void *dll);
void register_extendr_panic_hook(void);

void R_init_rscvi(void *dll) {
    // Without the hook every Rust Err surfacing as an R error also prints a panic backtrace.
    register_extendr_panic_hook();
    R_init_rscvi_extendr(dll);
}
