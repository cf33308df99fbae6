// What the C++ test drivers share: a CHECK that counts failures instead of stopping, a probe for
// std::invalid_argument, and the exit status that reports them.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace fastllm::testing {

inline int failures = 0;

#define CHECK(condition)                                                                           \
    do {                                                                                           \
        if (!(condition)) {                                                                        \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #condition);    \
            ++::fastllm::testing::failures;                                                        \
        }                                                                                          \
    } while (0)

// Whether call() throws std::invalid_argument (the C++ cores' error for bad input).
template <class Call>
bool throws_invalid_argument(Call call) {
    try {
        call();
    } catch (const std::invalid_argument&) {
        return true;
    }
    return false;
}

// main's return value: EXIT_FAILURE with a count on stderr if any CHECK failed.
inline int report(const char* driver) {
    if (failures) {
        std::fprintf(stderr, "%s: %d check(s) failed\n", driver, failures);
        return EXIT_FAILURE;
    }
    std::printf("%s: all checks passed\n", driver);
    return EXIT_SUCCESS;
}

}  // namespace fastllm::testing
