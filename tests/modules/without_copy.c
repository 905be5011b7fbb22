/*
 * A PKCS#11 module that is another module without C_CopyObject, as AWS CloudHSM, Google Cloud
 * KMS and YubiHSM 2 are by their documentation. Every other function is the inner module's own
 * (SoftHSM in the tests), named by the environment variable SIGNER_TEST_INNER_MODULE, which the
 * daemon's [hsm.environment] sets. Built by tests/test_hsm_without_copy.py; not part of signer.
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST shim;

static CK_RV no_copy(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR
                     template, CK_ULONG count, CK_OBJECT_HANDLE_PTR copy)
{
    (void)session; (void)object; (void)template; (void)count; (void)copy;
    return CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    if (shim.C_GetFunctionList == NULL) {
        const char *path = getenv("SIGNER_TEST_INNER_MODULE");
        void *inner = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        CK_C_GetFunctionList get = inner ? (CK_C_GetFunctionList)dlsym(inner, "C_GetFunctionList") : NULL;
        CK_FUNCTION_LIST_PTR real = NULL;
        if (get == NULL || get(&real) != CKR_OK || real == NULL)
            return CKR_GENERAL_ERROR;
        shim = *real;
        shim.C_GetFunctionList = C_GetFunctionList;
        shim.C_CopyObject = no_copy;
    }
    *list = &shim;
    return CKR_OK;
}
