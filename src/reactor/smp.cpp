#include "reactor/smp.hpp"

namespace ringmq::reactor {

smp::smp(unsigned participants, uint32_t queue_capacity)
    : n_(participants), slots_(std::make_unique<slot[]>(participants)),
      taken_(std::make_unique<taken_counter[]>(size_t{participants} * participants)) {
    queues_.reserve(size_t{n_} * n_);
    for (unsigned i = 0; i < n_ * n_; ++i)
        queues_.push_back(std::make_unique<spsc_queue<smp_msg>>(queue_capacity));
}

bool smp::has_incoming(unsigned shard) {
    for (unsigned from = 0; from < n_; ++from) {
        if (from != shard && !queue(from, shard).empty_for_consumer()) return true;
    }
    return false;
}

} // namespace ringmq::reactor
