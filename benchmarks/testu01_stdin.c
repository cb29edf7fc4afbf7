/* testu01_stdin: run a TestU01 battery on raw little-endian uint32 words
 * read from standard input (jaxdrop's benchmarks/rng_quality.py writes them).
 *
 * Build TestU01 1.2.3 (its official repository, umontreal-simul/TestU01-2009:
 * ./configure --prefix=$T --disable-shared && make && make install), then
 *   gcc -O2 -std=gnu99 -I$T/include testu01_stdin.c -o testu01_stdin \
 *       $T/lib/libtestu01.a $T/lib/libprobdist.a $T/lib/libmylib.a -lm
 *
 *   usage: testu01_stdin smallcrush|crush|bigcrush [name] < stream
 *
 * If stdin reaches EOF (or a read error occurs) before the battery is done,
 * an error is printed to stderr and the program exits with status 3; data is
 * never recycled.  Exit status 2 = usage error, 0 = battery completed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <errno.h>

#include "unif01.h"
#include "bbattery.h"

#define CHUNK_WORDS (1u << 20)          /* 1M words = 4 MiB per fread */

static uint32_t *buf;
static size_t buf_len = 0;              /* words currently in buf */
static size_t buf_pos = 0;              /* next word to hand out */
static unsigned long long words_used = 0;

static void refill (void)
{
   unsigned char *p = (unsigned char *) buf;
   size_t want = (size_t) CHUNK_WORDS * 4, have = 0;

   /* Fill the whole chunk if possible (pipes return short reads). */
   while (have < want) {
      size_t n = fread (p + have, 1, want - have, stdin);
      if (n == 0)
         break;
      have += n;
   }
   if (have < 4) {
      if (ferror (stdin))
         fprintf (stderr, "testu01_stdin: read error on stdin after %llu "
                  "words: %s\n", words_used, strerror (errno));
      else
         fprintf (stderr, "testu01_stdin: ERROR: EOF on stdin after %llu "
                  "32-bit words (%llu bytes); the battery needs more data. "
                  "Results are incomplete; aborting.\n",
                  words_used, words_used * 4ULL);
      fflush (stdout);
      exit (3);
   }
   /* A trailing partial word (have % 4 != 0) is dropped; the next refill
      will then hit EOF. */
   buf_len = have / 4;
   buf_pos = 0;

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
   for (size_t i = 0; i < buf_len; i++)
      buf[i] = __builtin_bswap32 (buf[i]);
#endif
}

static unsigned int next_bits (void)
{
   if (buf_pos >= buf_len)
      refill ();
   words_used++;
   return (unsigned int) buf[buf_pos++];
}

static void usage (const char *prog) __attribute__((noreturn));
static void usage (const char *prog)
{
   fprintf (stderr, "usage: %s smallcrush|crush|bigcrush [name] < data\n"
            "  stdin: raw little-endian uint32 words\n", prog);
   exit (2);
}

int main (int argc, char **argv)
{
   if (argc < 2 || argc > 3)
      usage (argv[0]);

   void (*battery) (unif01_Gen *);
   if (strcmp (argv[1], "smallcrush") == 0)
      battery = bbattery_SmallCrush;
   else if (strcmp (argv[1], "crush") == 0)
      battery = bbattery_Crush;
   else if (strcmp (argv[1], "bigcrush") == 0)
      battery = bbattery_BigCrush;
   else
      usage (argv[0]);

   buf = malloc ((size_t) CHUNK_WORDS * sizeof (uint32_t));
   if (buf == NULL) {
      fprintf (stderr, "testu01_stdin: out of memory\n");
      return 1;
   }

   char *name = (argc == 3) ? argv[2] : "stdin";
   unif01_Gen *gen = unif01_CreateExternGenBits (name, next_bits);
   battery (gen);
   unif01_DeleteExternGenBits (gen);

   fflush (stdout);
   fprintf (stderr, "testu01_stdin: done, consumed %llu words (%llu bytes)\n",
            words_used, words_used * 4ULL);
   free (buf);
   return 0;
}
