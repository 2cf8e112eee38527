# sae.c: e2e sparse autoencoders on GPT-2.
#   make demo                trains an SAE on the bundled demo model (GPU if present, else CPU) and writes the report
#   make train_gpt2_sae      GPU trainer (needs nvcc; runs on sm_90 / sm_80)
#   make train_gpt2_sae_cpu  fp32 CPU reference trainer
#   make test                builds and runs every test; GPU tests skip without a GPU, CUDA targets without nvcc
CXX ?= g++
CXXFLAGS ?= -O3 -std=c++17 -Wall -Wextra -Werror -fopenmp
NVCC ?= nvcc
GPU_ARCHS ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80
NVCCFLAGS ?= -O3 -std=c++17 $(GPU_ARCHS) -Xcompiler -Wall,-Wextra,-fopenmp -Werror all-warnings
CUDA_LIBS = -lcublasLt -lcublas
HOST_HEADERS = $(wildcard llmc/*.h)
CUDA_HEADERS = $(wildcard llmc/*.cuh)
# without nvcc, `all` and `test` build and run everything else and say the CUDA targets were skipped
HAVE_NVCC := $(shell command -v $(NVCC) 2>/dev/null)
CPU_TARGETS = train_gpt2_sae_cpu train_gpt2_sae_mocked train_gpt2_sae_emulated test_cpu test_gpu_mocked test_tokenizer test_feature_dump test_flash_emulated test_sae_emulated test_sae_sparse_emulated test_kl_emulated test_feature_dump_emulated test_adamw_emulated prepare_text
CUDA_TARGETS = $(if $(HAVE_NVCC),train_gpt2_sae test_gpt2_sae)
NO_NVCC_NOTE = $(if $(HAVE_NVCC),,@echo "nvcc not found: CUDA targets train_gpt2_sae and test_gpt2_sae skipped")

.PHONY: all test demo sanitize clean
all: $(CPU_TARGETS) $(CUDA_TARGETS)
	$(NO_NVCC_NOTE)

train_gpt2_sae_cpu: train_gpt2_sae_cpu.cpp $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@

train_gpt2_sae: train_gpt2_sae.cu $(HOST_HEADERS) $(CUDA_HEADERS)
	@$(if $(HAVE_NVCC),true,echo "error: nvcc not found: the GPU trainer needs the CUDA toolkit (without a GPU, use make train_gpt2_sae_cpu)" >&2; exit 1)
	$(NVCC) $(NVCCFLAGS) $< $(CUDA_LIBS) -o $@

# -O1 (it comes after CXXFLAGS' -O3, so it wins) for compile time: the test includes the whole CPU
# trainer and Catch2, and -O3 takes ~25 s of CPU to build it against ~15 s; the test runs no faster
# at -O3, its time goes to scripts/reference.py and the -O3 trainer binary it runs
test_cpu: test/test_cpu.cpp test/test_common.h train_gpt2_sae_cpu.cpp $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) -O1 $< -o $@

test_gpt2_sae: test/test_gpt2_sae.cu test/test_common.h train_gpt2_sae.cu $(HOST_HEADERS) $(CUDA_HEADERS)
	$(NVCC) $(NVCCFLAGS) $< $(CUDA_LIBS) -o $@

# the GPU trainer's host code on the CPU: g++ builds train_gpt2_sae.cu against test/mock_cuda.h's
# stand-ins for the CUDA runtime and every kernel launcher (its orchestration under test, not its kernels)
train_gpt2_sae_mocked: train_gpt2_sae.cu test/mock_cuda.h test/mock_cuda_runtime.h $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) -DMOCK_CUDA -x c++ $< -o $@

# runs train_gpt2_sae_mocked against train_gpt2_sae_cpu and PyTorch (order-only: both are built first);
# -O1 for compile time, as test_cpu
test_gpu_mocked: test/test_gpu_mocked.cpp test/test_common.h $(HOST_HEADERS) | train_gpt2_sae_mocked train_gpt2_sae_cpu
	$(CXX) $(CXXFLAGS) -O1 $< -o $@

test_feature_dump: test/test_feature_dump.cpp llmc/feature_dump.h $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@

# CUDA kernels on the CPU (test/cuda_host_emulation.h): each llmc header goes through
# test/emulate_launches.pl into build/emu/llmc/ (its <<<...>>> launches rewritten), so the launchers run
# there as written; C++20 for std::barrier; the kernels' #pragma unroll means nothing to g++; no
# _FORTIFY_SOURCE, whose longjmp check refuses the jumps between fiber stacks
# (through a .tmp: a copy the script refuses leaves no stale header behind)
build/emu/llmc/%.cuh: llmc/%.cuh test/emulate_launches.pl
	@mkdir -p build/emu/llmc
	perl -0p test/emulate_launches.pl $< > $@.tmp && mv $@.tmp $@
EMU_CXX = $(CXX) -O2 -std=c++20 -Wall -Wextra -Werror -Wno-unknown-pragmas -U_FORTIFY_SOURCE -pthread -Ibuild/emu/llmc -Illmc
EMU_HEADERS = $(patsubst llmc/%,build/emu/llmc/%,$(CUDA_HEADERS))
EMU_DEPS = test/cuda_host_emulation.h $(EMU_HEADERS) $(HOST_HEADERS)

# the flash attention kernels (mma.sync, ldmatrix, cp.async from the PTX ISA's definitions)
test_flash_emulated: test/test_flash_emulated.cpp $(EMU_DEPS)
	$(EMU_CXX) $< -o $@

# the SAE backward's fused pass, and the unfused kernels and launchers it replaces
test_sae_emulated: test/test_sae_emulated.cpp $(EMU_DEPS)
	$(EMU_CXX) $< -o $@

# --sae-kernels sparse: the index of c, the sparse decoder and backward, against the dense math
test_sae_sparse_emulated: test/test_sae_sparse_emulated.cpp $(EMU_DEPS)
	$(EMU_CXX) $< -o $@

# the one-pass KL through its launcher (a row split over a thread block cluster)
test_kl_emulated: test/test_kl_emulated.cpp $(EMU_DEPS)
	$(EMU_CXX) $< -o $@

# Adam(W) and the gradient norm through their launchers, with the copies the update writes along
test_adamw_emulated: test/test_adamw_emulated.cpp $(EMU_DEPS) llmc/schedule.h
	$(EMU_CXX) $< -o $@

# --dump-features' kernels through their launchers, against the CPU trainer's dump (g++ cannot see
# that K >= 1 fills the top-K's first slot: maybe-uninitialized is a false alarm there)
test_feature_dump_emulated: test/test_feature_dump_emulated.cpp $(EMU_DEPS) llmc/feature_dump.h \
		dev/cuda/feature_dump_checks.h dev/cuda/rand.h
	$(EMU_CXX) -Wno-maybe-uninitialized $< -o $@

# the GPU trainer with its kernels on the CPU: train_gpt2_sae.cu (copied into build/emu/, so that its
# llmc/*.cuh includes find the rewritten headers) on test/mock_cuda_runtime.h's runtime, every kernel
# and launcher as written (test/cuda_host_emulation.h), cuBLASLt's matmul a CPU loop (maybe-uninitialized:
# the dump's false alarm, as test_feature_dump_emulated)
# test_gpt2_sae.cu (the device tests) the same way, for dev/forecast_gpu_tests.sh --emulated
EMU_TRAINER_CXX = $(EMU_CXX) -Wno-maybe-uninitialized -DHOST_EMULATION -I. -x c++
build/emu/train_gpt2_sae.cu: train_gpt2_sae.cu
	@mkdir -p build/emu
	cp $< $@
build/emu/test/test_gpt2_sae.cu: test/test_gpt2_sae.cu
	@mkdir -p build/emu/test
	cp $< $@
train_gpt2_sae_emulated: build/emu/train_gpt2_sae.cu test/mock_cuda_runtime.h $(EMU_DEPS)
	$(EMU_TRAINER_CXX) $< -o $@
build/emu/test_gpt2_sae_emulated: build/emu/test/test_gpt2_sae.cu build/emu/train_gpt2_sae.cu test/test_common.h test/mock_cuda_runtime.h $(EMU_DEPS)
	$(EMU_TRAINER_CXX) -Itest -Wno-unused-function $< -o $@

test_tokenizer: test/test_tokenizer.cpp $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@ -lpcre2-8

prepare_text: dev/data/prepare_text.cpp $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@ -lpcre2-8

# every test binary runs; test/run_tests.sh prints "N passed, N failed, N skipped" and fails on any failure
test: $(CPU_TARGETS) $(CUDA_TARGETS)
	$(NO_NVCC_NOTE)
	bash test/run_tests.sh

# ASan + UBSan (float-cast-overflow included) builds of the CPU trainer, the tools, the mocked GPU
# trainer (the GPU trainer's host code, test_gpu_mocked) and their tests, run from build/sanitize,
# which links to the files the tests read; then the emulated GPU trainer (its kernels on the CPU,
# cudaMalloc blocks of exactly the size asked for, so a kernel's access past one is reported, as
# compute-sanitizer's memcheck would) for one update of bf16 --fused-backward on at the odd shapes
# (with an eval), with --attention flash, and for three updates with --cuda-graph on (captured at the
# second, replayed at the third, evals between), and with --sae-kernels sparse at the odd shapes and under
# a graph, on test_gpu_mocked's references (the emulation tells ASan
# of every switch between its fibers' stacks). CI runs it. libstdc++'s <regex> (inside Catch2) trips
# -Wmaybe-uninitialized under the sanitizers, hence that one warning off.
SANITIZE = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -Wno-maybe-uninitialized
SAN_DIR = build/sanitize
# the six emulated kernel tests too, at their own shapes (exact-size buffers: a kernel's access past
# one is reported; UBSan checks the indices into fixed-size __shared__ arrays)
SAN_EMU_TESTS = $(patsubst %,$(SAN_DIR)/test_%_emulated,flash sae sae_sparse kl adamw feature_dump)
$(SAN_DIR)/test_%_emulated: test/test_%_emulated.cpp $(EMU_DEPS) llmc/feature_dump.h llmc/schedule.h dev/cuda/feature_dump_checks.h dev/cuda/rand.h
	@mkdir -p $(SAN_DIR)
	$(EMU_CXX) $(SANITIZE) $< -o $@
sanitize: build/emu/train_gpt2_sae.cu $(EMU_HEADERS) $(SAN_EMU_TESTS)
	mkdir -p $(SAN_DIR)
	for d in data models scripts test dev llmc; do ln -sfn ../../$$d $(SAN_DIR)/$$d; done
	$(CXX) $(CXXFLAGS) $(SANITIZE) train_gpt2_sae_cpu.cpp -o $(SAN_DIR)/train_gpt2_sae_cpu
	$(CXX) $(CXXFLAGS) $(SANITIZE) test/test_cpu.cpp -o $(SAN_DIR)/test_cpu
	$(CXX) $(CXXFLAGS) $(SANITIZE) dev/data/prepare_text.cpp -o $(SAN_DIR)/prepare_text -lpcre2-8
	$(CXX) $(CXXFLAGS) $(SANITIZE) test/test_tokenizer.cpp -o $(SAN_DIR)/test_tokenizer -lpcre2-8
	$(CXX) $(CXXFLAGS) $(SANITIZE) test/test_feature_dump.cpp -o $(SAN_DIR)/test_feature_dump
	$(CXX) $(CXXFLAGS) $(SANITIZE) -DMOCK_CUDA -x c++ train_gpt2_sae.cu -o $(SAN_DIR)/train_gpt2_sae_mocked
	$(CXX) $(CXXFLAGS) $(SANITIZE) test/test_gpu_mocked.cpp -o $(SAN_DIR)/test_gpu_mocked
	$(EMU_TRAINER_CXX) $(SANITIZE) build/emu/train_gpt2_sae.cu -o $(SAN_DIR)/train_gpt2_sae_emulated
	cd $(SAN_DIR) && ./test_cpu && ./test_tokenizer && ./test_feature_dump && ./test_gpu_mocked
	cd $(SAN_DIR) && for t in $(notdir $(SAN_EMU_TESTS)); do ./$$t > $$t.log 2>&1 || { tail -40 $$t.log; exit 1; }; done
	cd $(SAN_DIR) && for run in "odd_e2e_ds --seq-len 17 --eval-samples 2 --eval-every 1" \
	                            "flash_hs64 --seq-len 80 --eval-samples 0 --attention flash" \
	                            "e2e_ds --seq-len 8 --eval-samples 2 --eval-every 1 --max-steps 3 --cuda-graph on" \
	                            "odd_e2e_ds --seq-len 17 --eval-samples 2 --eval-every 1 --max-steps 2 --sae-kernels sparse" \
	                            "e2e_ds --seq-len 8 --eval-samples 0 --max-steps 3 --cuda-graph on --sae-kernels sparse"; do \
	    set -- $$run; r=build/ref/$$1; shift; \
	    ./train_gpt2_sae_emulated --overwrite --model $$r/model.safetensors --train $$r/train.bin --val $$r/val.bin \
	        --init-sae $$r/init_sae --layer 1 --mode e2e+ds --batch 2 --grad-accum 2 --samples 200 --max-steps 1 \
	        --precision bf16 --fused-backward on --out build/san_emulated "$$@" > /dev/null || exit 1; done

# README's first command: build, train on the bundled demo model, dump features, write the HTML report
demo: train_gpt2_sae_cpu
	bash scripts/demo.sh

clean:
	rm -rf train_gpt2_sae train_gpt2_sae_cpu train_gpt2_sae_mocked train_gpt2_sae_emulated test_cpu test_gpu_mocked test_tokenizer test_feature_dump test_flash_emulated test_sae_emulated test_sae_sparse_emulated test_kl_emulated test_feature_dump_emulated test_adamw_emulated test_gpt2_sae prepare_text build
