# Offline stand-in for rules_cc: Bazel 4.2.3's own @bazel_tools loads these names from
# @rules_cc, which it would otherwise download. They are the native rules, re-exported.
cc_library = native.cc_library
cc_binary = native.cc_binary
cc_test = native.cc_test
cc_import = native.cc_import
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
