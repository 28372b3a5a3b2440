// Log-bucketed latency histogram for the load generator (HDR-like, about 1.6% relative precision).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <limits>

namespace loadgen {

// Counts of values (nanoseconds) in buckets of 64 linear sub-buckets per power of two: values below 128 are exact,
// above that a bucket spans 1/64 of its power of two, so a percentile is off by at most ~1.6%. Fixed size (30 KB),
// no allocation per value. Owned by one worker thread; merged into the totals by the controller after the run.
class histogram {
public:
    static constexpr unsigned sub_bits = 6;
    static constexpr std::size_t bucket_count = (64 - sub_bits) * (1u << sub_bits) + (2u << sub_bits);

    void record(std::uint64_t v) {
        ++counts_[index_of(v)];
        ++count_;
        sum_ += v;
        min_ = std::min(min_, v);
        max_ = std::max(max_, v);
    }

    void merge(const histogram& o) {
        if (o.count_ == 0) return;
        for (std::size_t i = 0; i < bucket_count; ++i)
            counts_[i] += o.counts_[i];
        count_ += o.count_;
        sum_ += o.sum_;
        min_ = std::min(min_, o.min_);
        max_ = std::max(max_, o.max_);
    }

    void reset() { *this = histogram{}; }

    std::uint64_t count() const { return count_; }
    std::uint64_t min() const { return count_ ? min_ : 0; }
    std::uint64_t max() const { return max_; }
    double mean() const { return count_ ? static_cast<double>(sum_) / static_cast<double>(count_) : 0.0; }

    // Value at quantile q (0..1): the midpoint of the bucket holding the ceil(q * count)-th value, clamped to the
    // exact min and max so that p100 and tiny samples stay honest.
    std::uint64_t quantile(double q) const {
        if (count_ == 0) return 0;
        auto rank = static_cast<std::uint64_t>(q * static_cast<double>(count_) + 0.999999);
        rank = std::clamp<std::uint64_t>(rank, 1, count_);
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < bucket_count; ++i) {
            seen += counts_[i];
            if (seen >= rank) return std::clamp(midpoint_of(i), min(), max_);
        }
        return max_;
    }

private:
    static std::size_t index_of(std::uint64_t v) {
        const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(v | 1));
        const unsigned shift = msb > sub_bits ? msb - sub_bits : 0;
        return (static_cast<std::size_t>(shift) << sub_bits) + static_cast<std::size_t>(v >> shift);
    }

    static std::uint64_t midpoint_of(std::size_t i) {
        const std::size_t shift = i < (2u << sub_bits) ? 0 : (i >> sub_bits) - 1;
        const std::uint64_t low = static_cast<std::uint64_t>(i - (shift << sub_bits)) << shift;
        return low + ((std::uint64_t{1} << shift) >> 1);
    }

    std::array<std::uint64_t, bucket_count> counts_{};
    std::uint64_t count_ = 0;
    std::uint64_t sum_ = 0;
    std::uint64_t min_ = std::numeric_limits<std::uint64_t>::max();
    std::uint64_t max_ = 0;
};

} // namespace loadgen
