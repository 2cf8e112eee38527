# sae.c: e2e sparse autoencoders on GPT-2.
#   make train_gpt2_sae      GPU trainer (needs nvcc; runs on sm_90 / sm_80)
#   make train_gpt2_sae_cpu  fp32 CPU reference trainer
#   make test                builds and runs every test; GPU tests skip without a GPU
CXX ?= g++
CXXFLAGS ?= -O3 -std=c++17 -Wall -Wextra -Werror -fopenmp
NVCC ?= nvcc
GPU_ARCHS ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80
NVCCFLAGS ?= -O3 -std=c++17 $(GPU_ARCHS) -Xcompiler -Wall,-Wextra,-fopenmp -Werror all-warnings
CUDA_LIBS = -lcublasLt -lcublas
HOST_HEADERS = $(wildcard llmc/*.h)
CUDA_HEADERS = $(wildcard llmc/*.cuh)

.PHONY: all test clean
all: train_gpt2_sae_cpu train_gpt2_sae test_cpu test_tokenizer test_feature_dump test_gpt2_sae prepare_text

train_gpt2_sae_cpu: train_gpt2_sae_cpu.cpp $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@

train_gpt2_sae: train_gpt2_sae.cu $(HOST_HEADERS) $(CUDA_HEADERS)
	$(NVCC) $(NVCCFLAGS) $< $(CUDA_LIBS) -o $@

test_cpu: test/test_cpu.cpp train_gpt2_sae_cpu.cpp $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) -O1 $< -o $@

test_gpt2_sae: test/test_gpt2_sae.cu train_gpt2_sae.cu $(HOST_HEADERS) $(CUDA_HEADERS)
	$(NVCC) $(NVCCFLAGS) $< $(CUDA_LIBS) -o $@

test_feature_dump: test/test_feature_dump.cpp llmc/feature_dump.h $(HOST_HEADERS)
	$(CXX) $(CXXFLAGS) $< -o $@

test_tokenizer: test/test_tokenizer.cpp llmc/tokenizer.h
	$(CXX) $(CXXFLAGS) $< -o $@ -lpcre2-8

prepare_text: dev/data/prepare_text.cpp llmc/tokenizer.h
	$(CXX) $(CXXFLAGS) $< -o $@ -lpcre2-8

# every test binary runs; test/run_tests.sh prints "N passed, N failed, N skipped" and fails on any failure
test: train_gpt2_sae_cpu test_cpu test_tokenizer test_feature_dump test_gpt2_sae train_gpt2_sae prepare_text
	bash test/run_tests.sh

clean:
	rm -rf train_gpt2_sae train_gpt2_sae_cpu test_cpu test_tokenizer test_feature_dump test_gpt2_sae prepare_text build
