/* glibc symbol versions for a manylinux2014 wheel (glibc >= 2.17, issue 20).
 *
 * glibc 2.34 moved libpthread and libdl into libc.so.6 and gave the moved functions a
 * new default version, GLIBC_2.34; linked on a newer glibc, a reference to them asks for
 * that version and the wheel would need glibc >= 2.34. libc.so.6 still exports every one
 * of them under its old version too (GLIBC_2.2.5 on x86-64, the same code), so each
 * reference here is pinned to the old version: the linker then binds it to that compat
 * symbol. On glibc < 2.34 the dynamic linker finds a versioned symbol in any loaded
 * object that defines it with that version name, so the extension also lists
 * libpthread.so.0 and libdl.so.2 as NEEDED (CMakeLists.txt), where those glibcs define
 * these functions; on glibc >= 2.34 both are empty stubs.
 *
 * Every translation unit of the kernel gets this header first (CMakeLists.txt: -include),
 * so a new call of one of these functions anywhere is pinned too; a pin of a function the
 * unit does not call emits nothing. The list is what `objdump -T` showed above GLIBC_2.17
 * before the pins; tools/build_wheel.sh fails if any symbol of the built extension needs
 * more than GLIBC_2.17.
 *
 * Active only where CMake defines LSTM_GLIBC_SYMVER_PINS: x86-64 glibc >= 2.34, and not
 * in sanitizer builds (ASan intercepts pthread_create by its default version). Nothing
 * is included here: the units define _GNU_SOURCE before their first header. */
#ifndef LSTM_GLIBC_COMPAT_H
#define LSTM_GLIBC_COMPAT_H

#if defined(LSTM_GLIBC_SYMVER_PINS) && defined(__x86_64__)
#define LSTM_PIN_(sym) __asm__(".symver " #sym "," #sym "@GLIBC_2.2.5");
LSTM_PIN_(pthread_create)
LSTM_PIN_(pthread_mutex_trylock)
LSTM_PIN_(pthread_once)
LSTM_PIN_(dlopen)
LSTM_PIN_(dlsym)
LSTM_PIN_(dlclose)
#undef LSTM_PIN_
#endif

#endif
